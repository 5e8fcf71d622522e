//! The volguard binary: everything lives in the library; see `volguard --help`.

fn main() -> std::process::ExitCode {
    volguard::cmd::main()
}
