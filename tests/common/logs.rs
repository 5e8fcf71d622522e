//! The log lines of a test binary, captured as an operator reads them (plain text), so
//! tests can assert the exact line a refusal writes.

use std::sync::{Mutex, OnceLock};

/// Starts capturing (once per test binary); every later log line is kept.
pub fn capture() {
    buffer();
}

/// Whether some captured line contains `text`.
pub fn contain(text: &str) -> bool {
    all().contains(text)
}

/// Everything captured so far.
pub fn all() -> String {
    String::from_utf8_lossy(&buffer().lock().unwrap()).into_owned()
}

fn buffer() -> &'static Mutex<Vec<u8>> {
    static LOGS: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Writer(logs))
            .try_init();
        logs
    })
}

struct Writer(&'static Mutex<Vec<u8>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
