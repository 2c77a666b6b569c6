//! `jrq-bench`: the benchmark behind `scripts/bench`. Everything lives in `jrq::bench`.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = jrq::bench::BenchArgs::parse();
    jrq::telemetry::init_stderr("warn");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jrq-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = args.json.clone();
    let docs = args.docs.clone();
    let result = runtime.block_on(async {
        let results = jrq::bench::run(args).await?;
        jrq::bench::report::write_json(&results, &json)?;
        jrq::bench::report::write_docs(&results, &docs)?;
        Ok::<_, jrq::Error>(())
    });
    match result {
        Ok(()) => {
            eprintln!(
                "jrq-bench: wrote {} and {}/benchmarks.md",
                json.display(),
                docs.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("jrq-bench: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
