//! Builds `meshlens-web` for wasm32 with a nested cargo (its own target dir, so it never waits on
//! the outer build's lock) and runs wasm-bindgen on it as a library, so the collector can serve the
//! real UI from a fresh clone with no extra step. Cargo reruns this only when the web app, the model
//! it uses, or Cargo.lock change. `MESHLENS_SKIP_WEB=1` writes a placeholder page instead, for a
//! fast edit loop on other crates (never in CI).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    if let Err(e) = run() {
        println!("cargo::error=building the web view: {e}");
    }
}

fn run() -> Result<(), String> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").map_err(|e| e.to_string())?);
    let root = manifest.parent().and_then(Path::parent).ok_or("no workspace root")?.to_owned();
    for p in ["web/src", "web/Cargo.toml", "web/index.html", "model/src", "Cargo.lock"] {
        println!("cargo::rerun-if-changed={}", root.join(p).display());
    }
    println!("cargo::rerun-if-env-changed=MESHLENS_SKIP_WEB");
    let out = PathBuf::from(std::env::var("OUT_DIR").map_err(|e| e.to_string())?);
    let pkg = out.join("pkg");
    std::fs::create_dir_all(&pkg).map_err(|e| e.to_string())?;
    let index = std::fs::read_to_string(root.join("web/index.html")).map_err(|e| format!("web/index.html: {e}"))?;
    std::fs::write(out.join("index.html"), index).map_err(|e| e.to_string())?;
    if std::env::var_os("MESHLENS_SKIP_WEB").is_some() {
        std::fs::write(
            pkg.join("meshlens_web.js"),
            "document.body.textContent = 'web view not built (MESHLENS_SKIP_WEB)';",
        )
        .map_err(|e| e.to_string())?;
        std::fs::write(pkg.join("meshlens_web_bg.wasm"), b"").map_err(|e| e.to_string())?;
        return Ok(());
    }
    // <target>/<profile>/build/<pkg>-<hash>/out -> <target>/web-wasm, kept between builds.
    let target = out.ancestors().nth(4).ok_or("unexpected OUT_DIR")?.join("web-wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "-p", "meshlens-web", "--lib", "--release", "--locked", "--target", "wasm32-unknown-unknown"])
        .arg("--target-dir")
        .arg(&target);
    for var in [
        "CARGO_TARGET_DIR",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().map_err(|e| format!("running cargo: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build of meshlens-web for wasm32 failed ({status})"));
    }
    let wasm = target.join("wasm32-unknown-unknown/release/meshlens_web.wasm");
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&wasm)
        .web(true)
        .map_err(|e| e.to_string())?
        .omit_default_module_path(false)
        .typescript(false)
        .generate(&pkg)
        .map_err(|e| format!("wasm-bindgen: {e}"))?;
    Ok(())
}
