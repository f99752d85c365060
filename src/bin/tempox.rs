//! `tempox`: inspect and repair the operation records of a store. See
//! [`tempox::cli`].

fn main() -> std::process::ExitCode {
    tempox::cli::main()
}
