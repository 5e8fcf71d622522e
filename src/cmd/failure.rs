//! How a subcommand fails: one line on stderr and a meaningful exit code.

/// A command failed: print `message` as one line and exit with `code`.
#[derive(Debug)]
pub struct Failure {
    /// 2 for bad input (flags, config, certificates, snapshot), 1 for runtime failures.
    pub code: u8,
    /// What went wrong, naming the file.
    pub message: String,
}

impl Failure {
    /// Bad input from the operator: exit code 2.
    pub fn usage(message: impl ToString) -> Self {
        Failure {
            code: 2,
            message: message.to_string(),
        }
    }

    /// A failure while running: exit code 1.
    pub fn runtime(message: impl ToString) -> Self {
        Failure {
            code: 1,
            message: message.to_string(),
        }
    }
}
