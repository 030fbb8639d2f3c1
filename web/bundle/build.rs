//! Builds `meshlens-web` for wasm32 with a nested cargo (its own target dir, so it never waits on
//! the outer build's lock) and runs wasm-bindgen on it as a library, so the collector can serve the
//! real UI from a fresh clone with no extra step. Cargo reruns this only when the web app, the model
//! it uses, or Cargo.lock change. `MESHLENS_SKIP_WEB=1` writes a placeholder page instead, for a
//! fast edit loop on other crates (never in CI).
//!
//! A fresh toolchain often lacks the wasm32 target: rustup does not add a target that
//! `rust-toolchain.toml` lists to a toolchain that is already installed, and the nested cargo runs the
//! toolchain's own binaries, past the rustup proxy. So before building, this checks that the target's
//! standard library is in the compiler's sysroot and, when it is not, runs `rustup target add` for the
//! active toolchain (saying so as a cargo warning). When that cannot be done it stops with one line
//! that names the command to run. The nested build's own error lines are passed on, never swallowed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const TARGET: &str = "wasm32-unknown-unknown";
/// How many of the nested build's diagnostic lines are passed on when it fails.
const MAX_ERROR_LINES: usize = 40;

fn main() {
    if let Err(e) = run() {
        for line in e.lines() {
            println!("cargo::error={line}");
        }
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
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    ensure_target(&rustc)?;
    // <target>/<profile>/build/<pkg>-<hash>/out -> <target>/web-wasm, kept between builds.
    let target = out.ancestors().nth(4).ok_or("unexpected OUT_DIR")?.join("web-wasm");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "-p", "meshlens-web", "--lib", "--release", "--locked", "--target", TARGET])
        .arg("--target-dir")
        .arg(&target)
        // The nested cargo must build with the same compiler whose sysroot was checked above.
        .env("RUSTC", &rustc)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
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
    let output = cmd.output().map_err(|e| format!("running cargo: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!(
            "building the web view: cargo build -p meshlens-web --target {TARGET} failed ({}):\n{}",
            output.status,
            diagnostics(&stderr)
        ));
    }
    let wasm = target.join(format!("{TARGET}/release/meshlens_web.wasm"));
    wasm_bindgen_cli_support::Bindgen::new()
        .input_path(&wasm)
        .web(true)
        .map_err(|e| e.to_string())?
        .omit_default_module_path(false)
        .typescript(false)
        .generate(&pkg)
        .map_err(|e| format!("building the web view: wasm-bindgen: {e}"))?;
    Ok(())
}

/// Makes sure the compiler's sysroot has the wasm32 standard library, adding the target with rustup
/// when it is missing. The error, when there is one, is a single line naming the command to run.
fn ensure_target(rustc: &str) -> Result<(), String> {
    let libdir = target_libdir(rustc)?;
    if has_core(&libdir) {
        return Ok(());
    }
    let toolchain = toolchain_name(rustc);
    let manual = match &toolchain {
        Some(t) => format!("rustup target add {TARGET} --toolchain {t}"),
        None => format!("rustup target add {TARGET}"),
    };
    let skip = "or set MESHLENS_SKIP_WEB=1 to build without the web view";
    let Some(rustup) = find_rustup() else {
        return Err(format!(
            "the {TARGET} target is not installed in {} and rustup was not found on PATH to add it: \
             install that target's standard library (with rustup: `{manual}`), {skip}",
            libdir.display()
        ));
    };
    println!("cargo::warning=the {TARGET} target is missing: running `{manual}` (the web view is built for it)");
    // Also on stderr, so a user who watches the build sees why it pauses to download.
    eprintln!("meshlens-web-bundle: the {TARGET} target is missing: running `{manual}`");
    let mut add = Command::new(&rustup);
    add.args(["target", "add", TARGET]);
    if let Some(t) = &toolchain {
        add.args(["--toolchain", t]);
    }
    let result = add.stdout(Stdio::null()).stderr(Stdio::piped()).output();
    let reason = match result {
        Ok(o) if o.status.success() && has_core(&libdir) => return Ok(()),
        Ok(o) if o.status.success() => format!("it succeeded but {} still has no core library", libdir.display()),
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            // rustup's own first error line says why; the last is often only a pointer to --help.
            let lines = || stderr.lines().map(str::trim).filter(|l| !l.is_empty());
            let why = lines().find(|l| l.to_ascii_lowercase().starts_with("error")).or_else(|| lines().next_back());
            format!("it failed ({}): {}", o.status, why.unwrap_or("no message"))
        }
        Err(e) => format!("{}: {e}", rustup.display()),
    };
    Err(format!(
        "the {TARGET} target is not installed and `{manual}` could not add it ({reason}); \
         run it by hand once the toolchain can be updated, {skip}"
    ))
}

fn target_libdir(rustc: &str) -> Result<PathBuf, String> {
    let out = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .map_err(|e| format!("running {rustc}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{rustc} --print target-libdir --target {TARGET} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// Whether `libdir` holds the target's `core`: that is what E0463 says is missing without it.
fn has_core(libdir: &Path) -> bool {
    std::fs::read_dir(libdir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("libcore-") && name.ends_with(".rlib")
        })
    })
}

/// The toolchain rustup is running us under (`RUSTUP_TOOLCHAIN`, which its proxy sets), else the
/// sysroot's folder name when it sits in rustup's `toolchains/`.
fn toolchain_name(rustc: &str) -> Option<String> {
    if let Ok(t) = std::env::var("RUSTUP_TOOLCHAIN")
        && !t.is_empty()
    {
        return Some(t);
    }
    let out = Command::new(rustc).args(["--print", "sysroot"]).output().ok()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let parent = sysroot.parent()?;
    (parent.file_name()? == "toolchains").then(|| sysroot.file_name().map(|n| n.to_string_lossy().into_owned()))?
}

fn find_rustup() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    dirs.into_iter().map(|d| d.join("rustup")).find(|p| p.is_file())
}

/// The lines of a failed cargo build that say what went wrong (errors and their notes and help),
/// at most [`MAX_ERROR_LINES`]; everything when none matches, so nothing is hidden.
fn diagnostics(stderr: &str) -> String {
    let picked: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            let t = l.trim_start();
            t.starts_with("error") || t.starts_with("= note") || t.starts_with("= help") || t.starts_with("-->")
        })
        .take(MAX_ERROR_LINES)
        .collect();
    if picked.is_empty() {
        stderr.lines().rev().take(MAX_ERROR_LINES).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    } else {
        picked.join("\n")
    }
}
