//! The web view, bundled: the page, the wasm-bindgen glue and the wasm module that the collector
//! serves at `/`, `/app.js` and `/app_bg.wasm`. The build script makes them (see `build.rs`).

/// The page.
pub const INDEX_HTML: &str = include_str!(concat!(env!("OUT_DIR"), "/index.html"));
/// The JavaScript glue that loads the module.
pub const APP_JS: &str = include_str!(concat!(env!("OUT_DIR"), "/pkg/meshlens_web.js"));
/// The module.
pub const APP_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pkg/meshlens_web_bg.wasm"));
