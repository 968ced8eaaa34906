use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt as _;

use super::*;

/// A connection that records each write it is given, taking at most
/// `per_write` bytes of each.
#[derive(Clone)]
struct Recorder {
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
    per_write: usize,
    shut: Arc<AtomicBool>,
}

impl Recorder {
    fn new(per_write: usize) -> Self {
        Self {
            writes: Arc::default(),
            per_write,
            shut: Arc::default(),
        }
    }

    fn writes(&self) -> Vec<Vec<u8>> {
        self.writes.lock().unwrap().clone()
    }

    fn bytes(&self) -> Vec<u8> {
        self.writes().concat()
    }
}

impl AsyncWrite for Recorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = data.len().min(self.per_write);
        self.writes.lock().unwrap().push(data[..n].to_vec());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut.store(true, Ordering::Release);
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn writes_are_held_until_a_flush_and_go_out_whole_and_in_order() {
    let wire = Recorder::new(usize::MAX);
    let mut conn = Coalesce::new(wire.clone());
    conn.write_all(b"one ").await.unwrap();
    conn.write_all(b"two ").await.unwrap();
    conn.write_all(b"three").await.unwrap();
    assert!(wire.writes().is_empty(), "written before any flush");
    conn.flush().await.unwrap();
    assert_eq!(wire.writes(), [b"one two three".to_vec()]);
    conn.write_all(b" four").await.unwrap();
    conn.shutdown().await.unwrap();
    assert_eq!(wire.bytes(), b"one two three four");
    assert!(wire.shut.load(Ordering::Acquire));
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_taking_little_at_a_time_and_a_full_buffer_lose_nothing() {
    let wire = Recorder::new(1000);
    let mut conn = Coalesce::new(wire.clone());
    let data: Vec<u8> = (0..3 * LIMIT + 17).map(|i| (i % 251) as u8).collect();
    for chunk in data.chunks(4096) {
        conn.write_all(chunk).await.unwrap();
    }
    conn.flush().await.unwrap();
    assert_eq!(wire.bytes(), data);
    // A write as large as the buffer goes straight through when nothing
    // is held.
    let large = vec![7u8; LIMIT];
    let before = wire.writes().len();
    conn.write_all(&large).await.unwrap();
    assert!(wire.writes().len() > before, "a large write was held");
    conn.flush().await.unwrap();
    assert_eq!(&wire.bytes()[data.len()..], &large[..]);
}

/// The server's pattern: many stream tasks, woken from another thread
/// (a change broadcast to watchers), each hand a frame to the one task
/// that owns the connection and wakes it. Without coalescing the
/// connection task writes between every two stream tasks (one write per
/// frame here); with it, the frames of the tasks already woken go out
/// together.
#[tokio::test(flavor = "current_thread")]
async fn frames_of_many_tasks_woken_together_go_out_in_few_writes() {
    const STREAMS: usize = 100;
    let wire = Recorder::new(usize::MAX);
    let (frames_tx, mut frames) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let (change_tx, _) = tokio::sync::broadcast::channel::<u8>(1);
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let mut change = change_tx.subscribe();
        let frames = frames_tx.clone();
        streams.push(tokio::spawn(async move {
            let n = change.recv().await.unwrap();
            frames.send(vec![n, i as u8]).unwrap();
        }));
    }
    drop(frames_tx);
    // As hyper's HTTP/2 connection: each poll takes every frame the
    // streams have queued (and is woken by the next one, even while a
    // flush is pending), writes them, then flushes.
    let connection = {
        let wire = wire.clone();
        tokio::spawn(async move {
            let mut conn = Coalesce::new(wire);
            let mut open = true;
            std::future::poll_fn(|cx| {
                while open {
                    match frames.poll_recv(cx) {
                        Poll::Ready(Some(frame)) => {
                            let written = Pin::new(&mut conn).poll_write(cx, &frame);
                            assert!(matches!(written, Poll::Ready(Ok(2))), "{written:?}");
                        }
                        Poll::Ready(None) => open = false,
                        Poll::Pending => break,
                    }
                }
                ready!(Pin::new(&mut conn).poll_flush(cx)).unwrap();
                if open { Poll::Pending } else { Poll::Ready(()) }
            })
            .await;
        })
    };
    // Let every task reach its wait.
    tokio::task::yield_now().await;
    // Woken from another thread while this one waits: every stream task
    // is queued before any runs.
    std::thread::spawn(move || change_tx.send(9).unwrap())
        .join()
        .unwrap();
    for stream in streams {
        stream.await.unwrap();
    }
    connection.await.unwrap();
    let writes = wire.writes();
    let bytes = wire.bytes();
    assert_eq!(bytes.len(), 2 * STREAMS, "a frame was lost");
    let mut seen: Vec<u8> = bytes.chunks(2).map(|f| f[1]).collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..STREAMS as u8).collect::<Vec<_>>());
    assert!(
        writes.len() <= STREAMS / 10,
        "{} writes for {STREAMS} frames: flushes did not wait for the woken tasks",
        writes.len()
    );
}
