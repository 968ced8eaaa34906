//! The process runtime's container logs: the shim writes each line of a
//! container's stdout and stderr as a record of the CRI log format (its
//! time, its stream, whether it is a whole line), so that a reader can ask
//! for the lines since a time and see when each was written.

use std::time::{Duration, SystemTime};

use crate::LogOptions;

/// The longest line kept as one record; a longer one is split into
/// partial records (the kubelet's CRI logs split at 16 KiB too).
pub(super) const MAX_RECORD: u64 = 16 * 1024;

/// Writes one log record as the CRI log format has it:
/// `TIME STREAM TAG CONTENT\n`, TIME in RFC 3339 with nanoseconds, TAG
/// `F` for a whole line, `P` for part of a longer one.
pub(super) fn write_record(
    out: &mut impl std::io::Write,
    at: SystemTime,
    stream: &str,
    full: bool,
    content: &[u8],
) -> std::io::Result<()> {
    let tag = if full { "F" } else { "P" };
    let mut record = format!("{} {stream} {tag} ", rfc3339_nano(at)).into_bytes();
    record.extend_from_slice(content);
    record.push(b'\n');
    // One write per record: records of stdout and stderr never interleave.
    out.write_all(&record)
}

/// `at` as Go's RFC3339Nano writes it (the CRI's and Docker's form):
/// nanoseconds without their trailing zeros.
fn rfc3339_nano(at: SystemTime) -> String {
    let full = humantime::format_rfc3339_nanos(at).to_string();
    match full.strip_suffix('Z').and_then(|t| t.split_once('.')) {
        Some((seconds, fraction)) => {
            let fraction = fraction.trim_end_matches('0');
            if fraction.is_empty() {
                format!("{seconds}Z")
            } else {
                format!("{seconds}.{fraction}Z")
            }
        }
        None => full,
    }
}

/// Copies `from` (a container's stdout or stderr) into `log` as records
/// until it ends. A record that cannot be written (a full disk) is lost,
/// but the stream is still read: the container is never stopped by its
/// log.
pub(super) fn pump(from: impl std::io::Read, stream: &str, log: &std::sync::Mutex<std::fs::File>) {
    use std::io::BufRead as _;
    let mut from = std::io::BufReader::new(from);
    let mut line = Vec::new();
    loop {
        line.clear();
        match std::io::Read::take(&mut from, MAX_RECORD).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let full = line.last() == Some(&b'\n');
        let content = line.strip_suffix(b"\n").unwrap_or(&line);
        // A last line without its newline is whole all the same.
        let whole = full || (line.len() as u64) < MAX_RECORD;
        if let Ok(mut log) = log.lock() {
            let _ = write_record(&mut *log, SystemTime::now(), stream, whole, content);
        }
    }
}

/// One record of a log, as [`write_record`] wrote it.
struct Record<'a> {
    time: &'a [u8],
    at: SystemTime,
    full: bool,
    content: &'a [u8],
}

/// Reads a record (a line without its newline); None for a line that is
/// not one (a log written before records were).
fn parse_record(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = parts.next()?;
    let stream = parts.next()?;
    let tag = parts.next()?;
    let content = parts.next().unwrap_or_default();
    if stream != b"stdout" && stream != b"stderr" || tag != b"F" && tag != b"P" {
        return None;
    }
    let at = humantime::parse_rfc3339(std::str::from_utf8(time).ok()?).ok()?;
    Some(Record {
        time,
        at,
        full: tag == b"F",
        content,
    })
}

/// Turns the log's records into what a reader asked for: the content,
/// from `since` on, each line after its time with `timestamps`.
#[derive(Debug, Default)]
pub(super) struct LogReader {
    since: Option<SystemTime>,
    timestamps: bool,
    /// The start of a record not yet ended by its newline.
    pending: Vec<u8>,
    /// The last record was part of a line: the next one goes on.
    mid_line: bool,
    /// The line being read is before `since`.
    skipping: bool,
}

impl LogReader {
    pub(super) fn new(options: &LogOptions) -> Self {
        Self {
            since: options
                .since
                .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s.max(0).unsigned_abs())),
            timestamps: options.timestamps,
            ..Default::default()
        }
    }

    /// What `chunk` completes, in the reader's form.
    pub(super) fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(chunk);
        let Some(end) = self.pending.iter().rposition(|b| *b == b'\n') else {
            return Vec::new();
        };
        let rest = self.pending.split_off(end + 1);
        let complete = std::mem::replace(&mut self.pending, rest);
        let mut out = Vec::with_capacity(complete.len());
        for line in complete[..complete.len() - 1].split(|b| *b == b'\n') {
            self.line(line, &mut out);
        }
        out
    }

    /// What is left at the end of the log.
    pub(super) fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.pending);
        let mut out = Vec::new();
        if !rest.is_empty() {
            self.line(&rest, &mut out);
        }
        out
    }

    fn line(&mut self, line: &[u8], out: &mut Vec<u8>) {
        let Some(record) = parse_record(line) else {
            self.mid_line = false;
            out.extend_from_slice(line);
            out.push(b'\n');
            return;
        };
        // A line split into records is judged, and stamped, by its first.
        if !self.mid_line {
            self.skipping = self.since.is_some_and(|since| record.at < since);
            if self.timestamps && !self.skipping {
                out.extend_from_slice(record.time);
                out.push(b' ');
            }
        }
        self.mid_line = !record.full;
        if self.skipping {
            return;
        }
        out.extend_from_slice(record.content);
        if record.full {
            out.push(b'\n');
        }
    }
}
