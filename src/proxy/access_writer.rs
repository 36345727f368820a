//! Where access-log lines go: a bounded queue drained by one writer thread that wakes every
//! [`PERIOD`] and writes everything queued in one go.
//!
//! Per-line wake-ups and syscalls would cost more than the line itself: the request path only
//! `try_send`s into the queue (which never blocks and never wakes the writer), and a full queue drops
//! the line and counts it (`lb_access_log_dropped_total`) rather than slowing requests down.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the writer thread drains the queue.
pub const PERIOD: Duration = Duration::from_millis(20);
/// Lines the queue holds before dropping (a few seconds of a busy proxy's log).
pub const CAPACITY: usize = 65_536;
/// Bytes the queue holds before dropping: lines can be long (a path or User-Agent of many KiB), so
/// the line count alone would not bound memory.
pub const BYTE_BUDGET: usize = 32 << 20;
/// Longest wait at exit for the final flush (stdout may be a pipe nobody reads).
const EXIT_FLUSH_LIMIT: Duration = Duration::from_secs(1);

static DROPPED: AtomicU64 = AtomicU64::new(0);
static QUEUED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Lines dropped so far because the queue was full.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// The `tracing` writer for access lines: cheap to clone, one per event.
#[derive(Debug, Clone)]
pub struct AccessWriter {
    tx: SyncSender<Vec<u8>>,
}

/// Flushes what is queued and stops the writer thread when dropped (at exit).
#[derive(Debug)]
pub struct FlushOnDrop {
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        // The global subscriber keeps a sender forever, so the queue never disconnects: ask the
        // writer to stop instead. It finishes within one period plus a final write.
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let deadline = std::time::Instant::now() + EXIT_FLUSH_LIMIT;
            while !t.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl AccessWriter {
    /// Starts the writer thread on `out` (stdout in production).
    pub fn start(out: impl Write + Send + 'static) -> (Self, FlushOnDrop) {
        let (tx, rx) = mpsc::sync_channel(CAPACITY);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("lb-access-log".into())
            .spawn(move || drain(rx, out, &flag))
            .ok();
        (Self { tx }, FlushOnDrop { thread, stop })
    }
}

fn drain(rx: Receiver<Vec<u8>>, mut out: impl Write, stop: &AtomicBool) {
    let mut batch = Vec::with_capacity(64 * 1024);
    loop {
        // Parked rather than slept, so a stop request cuts the wait short.
        std::thread::park_timeout(PERIOD);
        let mut closed = stop.load(Ordering::Acquire);
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    QUEUED_BYTES.fetch_sub(line.len(), Ordering::Relaxed);
                    batch.extend_from_slice(&line);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        if !batch.is_empty() {
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
        }
        if closed {
            return;
        }
    }
}

impl Write for AccessWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if QUEUED_BYTES.fetch_add(buf.len(), Ordering::Relaxed) + buf.len() > BYTE_BUDGET {
            QUEUED_BYTES.fetch_sub(buf.len(), Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return Ok(buf.len());
        }
        match self.tx.try_send(buf.to_vec()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                QUEUED_BYTES.fetch_sub(buf.len(), Ordering::Relaxed);
                DROPPED.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for AccessWriter {
    type Writer = AccessWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_output_cannot_hang_exit() {
        struct Stuck;
        impl Write for Stuck {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                std::thread::sleep(Duration::from_secs(3600));
                Ok(0)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (writer, guard) = AccessWriter::start(Stuck);
        writer.clone().write_all(b"line\n").unwrap();
        std::thread::sleep(PERIOD * 3);
        let start = std::time::Instant::now();
        drop(guard);
        assert!(start.elapsed() < EXIT_FLUSH_LIMIT * 3, "exit waited {:?}", start.elapsed());
    }

    #[test]
    fn lines_arrive_in_order_and_are_flushed_at_exit_even_with_a_live_sender() {
        let sink = Sink::default();
        let (writer, guard) = AccessWriter::start(sink.clone());
        for i in 0..1000 {
            writer.clone().write_all(format!("line {i}\n").as_bytes()).unwrap();
        }
        // Like the global subscriber, `writer` outlives the guard: dropping the guard must not hang.
        drop(guard);
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1000);
        assert_eq!((lines[0], lines[999]), ("line 0", "line 999"));
        drop(writer);
    }
}
