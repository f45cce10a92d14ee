//! Chooses the f32 CPU matrix multiply at build time.
//!
//! BERT training and inference are mostly matrix multiplies. When the system has an
//! optimised BLAS, candle-distill calls it (`cfg(system_blas)`, src/model/blas.rs);
//! otherwise candle's pure-Rust `gemm` runs, so a fresh machine builds with no system
//! package. `CANDLE_DISTILL_BLAS` overrides the choice:
//! - `auto` (default): OpenBLAS when pkg-config finds it (Debian: `libopenblas-dev`),
//!   Accelerate on macOS, else the pure-Rust path;
//! - `openblas`: OpenBLAS or a build error (the `openblas` feature asks the same);
//! - `none`: the pure-Rust path (binaries carried to machines without OpenBLAS).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(system_blas)");
    println!("cargo::rustc-check-cfg=cfg(blas_accelerate)");
    println!("cargo::rerun-if-env-changed=CANDLE_DISTILL_BLAS");
    println!("cargo::rerun-if-env-changed=PKG_CONFIG_PATH");
    println!("cargo::rerun-if-changed=build.rs");
    let choice = std::env::var("CANDLE_DISTILL_BLAS").unwrap_or_else(|_| "auto".into());
    let required = std::env::var_os("CARGO_FEATURE_OPENBLAS").is_some() || choice == "openblas";
    match choice.as_str() {
        "none" if !required => return,
        "auto" | "openblas" | "none" => {}
        other => panic!("CANDLE_DISTILL_BLAS={other}: expected auto, openblas or none"),
    }
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "macos" && !required {
        println!("cargo::rustc-link-lib=framework=Accelerate");
        println!("cargo::rustc-cfg=system_blas");
        println!("cargo::rustc-cfg=blas_accelerate");
        return;
    }
    match pkg_config::Config::new().probe("openblas") {
        Ok(_) => println!("cargo::rustc-cfg=system_blas"),
        Err(e) if required => panic!(
            "OpenBLAS was asked for (feature `openblas` or CANDLE_DISTILL_BLAS=openblas) but \
             pkg-config cannot find it: {e}\nInstall it (Debian/Ubuntu: apt-get install \
             libopenblas-dev) or build without it."
        ),
        Err(_) => println!(
            "cargo::warning=OpenBLAS not found: using candle's pure-Rust matmul. Installing \
             libopenblas-dev (Debian/Ubuntu) makes training and inference faster; see README."
        ),
    }
}
