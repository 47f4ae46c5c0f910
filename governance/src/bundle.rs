//! JavaScript application bundles in CCF's format, for the `set_js_app` proposal action.
//!
//! An application directory holds `app.json` (the metadata: endpoints and their policies) and the modules under
//! `src/`. The bundle is `{"metadata": <app.json>, "modules": [{"name": "<path relative to src, with />",
//! "module": "<source>"}, ...]}`, modules sorted by name; the action is
//! `{"name": "set_js_app", "args": {"bundle": <bundle>}}`.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Why a bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// A file or directory could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// `app.json` is not JSON.
    #[error("{} is not valid JSON: {error}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The parse error.
        error: serde_json::Error,
    },
    /// A module is not UTF-8 text.
    #[error("module {} is not UTF-8 text", .0.display())]
    NotText(PathBuf),
    /// The directory has no module.
    #[error("no .js module under {}", .0.display())]
    NoModules(PathBuf),
    /// A module's path under src/ cannot be a module name (not UTF-8).
    #[error("module path {} is not UTF-8", .0.display())]
    BadName(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |error| BundleError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// Reads an application directory (`DIR/app.json`, `DIR/src/**/*.js`) into a bundle.
pub fn build_bundle(dir: impl AsRef<Path>) -> Result<Value, BundleError> {
    let dir = dir.as_ref();
    let metadata_path = dir.join("app.json");
    let metadata_text = std::fs::read_to_string(&metadata_path).map_err(io(&metadata_path))?;
    let metadata: Value = serde_json::from_str(&metadata_text).map_err(|error| BundleError::Metadata {
        path: metadata_path.clone(),
        error,
    })?;
    let src = dir.join("src");
    let mut files = Vec::new();
    collect_js(&src, &mut files)?;
    let mut modules = Vec::with_capacity(files.len());
    for file in files {
        let relative = file.strip_prefix(&src).unwrap_or(&file);
        let name = relative
            .components()
            .map(|c| c.as_os_str().to_str())
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| BundleError::BadName(relative.to_path_buf()))?
            .join("/");
        let bytes = std::fs::read(&file).map_err(io(&file))?;
        let source = String::from_utf8(bytes).map_err(|_| BundleError::NotText(file.clone()))?;
        modules.push((name, source));
    }
    if modules.is_empty() {
        return Err(BundleError::NoModules(src));
    }
    modules.sort();
    let modules: Vec<Value> = modules
        .into_iter()
        .map(|(name, module)| json!({"name": name, "module": module}))
        .collect();
    Ok(json!({"metadata": metadata, "modules": modules}))
}

/// The `set_js_app` action for an application directory.
pub fn set_js_app_action(dir: impl AsRef<Path>) -> Result<Value, BundleError> {
    Ok(json!({"name": "set_js_app", "args": {"bundle": build_bundle(dir)?}}))
}

/// Every `.js` file under `dir`, recursively. Symbolic links to files are read; symbolic links to directories
/// are not followed (no cycles).
fn collect_js(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BundleError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let file_type = entry.file_type().map_err(io(&path))?;
        if file_type.is_dir() {
            collect_js(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "js")
            && (file_type.is_file() || path.metadata().map(|m| m.is_file()).unwrap_or(false))
        {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_ccfs_bundle_format() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path();
        std::fs::write(
            app.join("app.json"),
            r#"{"endpoints": {"/hello": {"get": {"js_module": "endpoints/hello.js", "js_function": "hello"}}}}"#,
        )
        .unwrap();
        std::fs::create_dir_all(app.join("src/endpoints/nested")).unwrap();
        std::fs::write(app.join("src/endpoints/hello.js"), "export function hello() {}").unwrap();
        std::fs::write(app.join("src/endpoints/nested/util.js"), "export const x = 1;").unwrap();
        std::fs::write(app.join("src/a.js"), "// a").unwrap();
        std::fs::write(app.join("src/README.md"), "not a module").unwrap();
        let action = set_js_app_action(app).unwrap();
        assert_eq!(action["name"], "set_js_app");
        let bundle = &action["args"]["bundle"];
        assert_eq!(
            bundle["metadata"]["endpoints"]["/hello"]["get"]["js_function"],
            "hello"
        );
        assert_eq!(
            bundle["modules"],
            json!([
                {"name": "a.js", "module": "// a"},
                {"name": "endpoints/hello.js", "module": "export function hello() {}"},
                {"name": "endpoints/nested/util.js", "module": "export const x = 1;"},
            ])
        );
    }

    #[test]
    fn reports_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path();
        assert!(matches!(build_bundle(app), Err(BundleError::Io { .. })));
        std::fs::write(app.join("app.json"), "{not json").unwrap();
        let err = build_bundle(app).unwrap_err();
        assert!(matches!(err, BundleError::Metadata { .. }), "{err}");
        std::fs::write(app.join("app.json"), "{}").unwrap();
        let err = build_bundle(app).unwrap_err();
        assert!(err.to_string().contains("src"), "{err}");
        std::fs::create_dir(app.join("src")).unwrap();
        assert!(matches!(build_bundle(app), Err(BundleError::NoModules(_))));
        std::fs::write(app.join("src/bad.js"), [0xff, 0xfe]).unwrap();
        assert!(matches!(build_bundle(app), Err(BundleError::NotText(_))));
    }
}
