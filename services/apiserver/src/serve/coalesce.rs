//! Fewer, larger writes to a connection.
//!
//! hyper's HTTP/2 connection writes and flushes the frames it holds each
//! time it is polled, and a change fanned out to the watch streams of one
//! connection wakes it once per stream: with 100 watchers on a connection
//! the server made ~35 writes per connection per change (`skiff-bench
//! watch --watchers 10000`, counted with `perf stat`). [`Coalesce`] keeps
//! what is written in a buffer, and a flush waits until the runtime has
//! run the tasks already woken (`tokio::task::yield_now` defers its
//! wake-up until the scheduler next checks for I/O): the frames those
//! tasks queue go out with it, in one write.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// At most this much is held before writes go through to the connection.
const LIMIT: usize = 64 * 1024;

/// A buffer this large is given back once drained (an idle connection
/// keeps none).
const KEEP: usize = 8 * 1024;

/// An I/O object whose writes are held until a flush that has let the
/// tasks already woken run first.
pub struct Coalesce<T> {
    inner: T,
    buf: Vec<u8>,
    /// Of `buf`, already written.
    written: usize,
    /// A flush waiting for the scheduler's deferred wake-up.
    waiting: Option<Arc<Deferred>>,
    /// A flush past its wait, writing out what is held.
    draining: bool,
}

/// The wake-up a flush waits for: it records that it came, and wakes the
/// connection's task.
struct Deferred {
    fired: AtomicBool,
    task: Mutex<Waker>,
}

impl Wake for Deferred {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .wake_by_ref();
    }
}

impl<T> Coalesce<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            waiting: None,
            draining: false,
        }
    }

    fn held(&self) -> usize {
        self.buf.len() - self.written
    }

    /// Room left in the buffer.
    fn room(&self) -> usize {
        LIMIT.saturating_sub(self.buf.len())
    }
}

impl<T: AsyncWrite + Unpin> Coalesce<T> {
    /// Writes out everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.held() > 0 {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.written = 0;
        self.draining = false;
        // A wake-up still to come finds nothing to wait for.
        self.waiting = None;
        if self.buf.capacity() > KEEP {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the scheduler's deferred wake-up has come since the first
    /// flush of what is held; asks for it when not yet.
    fn after_woken_tasks(&mut self, cx: &mut Context<'_>) -> bool {
        match &self.waiting {
            Some(deferred) if deferred.fired.load(Ordering::Acquire) => {
                self.waiting = None;
                true
            }
            Some(deferred) => {
                let mut task = deferred
                    .task
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !task.will_wake(cx.waker()) {
                    *task = cx.waker().clone();
                }
                false
            }
            None => {
                let deferred = Arc::new(Deferred {
                    fired: AtomicBool::new(false),
                    task: Mutex::new(cx.waker().clone()),
                });
                let waker = Waker::from(Arc::clone(&deferred));
                // Its first poll hands `waker` to the scheduler to wake
                // after the tasks it has queued (at once outside a runtime).
                let mut yielded = std::pin::pin!(tokio::task::yield_now());
                let _ = yielded.as_mut().poll(&mut Context::from_waker(&waker));
                let fired = deferred.fired.load(Ordering::Acquire);
                if !fired {
                    self.waiting = Some(deferred);
                }
                fired
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesce<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesce<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.room() == 0 {
            ready!(this.poll_drain(cx))?;
        }
        if this.held() == 0 && data.len() >= LIMIT {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        let n = data.len().min(this.room());
        this.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.room() == 0 {
            ready!(this.poll_drain(cx))?;
        }
        let mut n = 0;
        for data in bufs {
            let take = data.len().min(this.room());
            this.buf.extend_from_slice(&data[..take]);
            n += take;
            if take < data.len() {
                break;
            }
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held() > 0 {
            if !this.draining {
                if !this.after_woken_tasks(cx) {
                    return Poll::Pending;
                }
                this.draining = true;
            }
            ready!(this.poll_drain(cx))?;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
