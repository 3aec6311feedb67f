//! Layer tars as an import, a snapshot restore or (later) an OCI pull
//! hands them over: from anyone. Unpacking one never writes outside its
//! directory, and the layer it leaves exports and re-snapshots without
//! following anything out of it.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let base = std::env::temp_dir().join(format!("spinup-fuzz-tar-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("layer");
    std::fs::create_dir_all(&root).unwrap();
    // A file beside the layer that an escaping entry could overwrite.
    std::fs::write(base.join("outside"), b"untouched").unwrap();
    let _ = spinup_layers::unpack(&root, data, true, |_| {});
    let beside: Vec<_> = std::fs::read_dir(&base).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(beside.len(), 2, "an entry landed beside the layer: {beside:?}");
    assert_eq!(std::fs::read(base.join("outside")).unwrap(), b"untouched", "an entry wrote outside the layer");
    // Whatever the tar made, the layer walks as bytes.
    let _ = spinup_layers::export_upper(&root, std::io::sink());
    let copy = base.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    let _ = spinup_layers::snapshot_upper(&root, &copy);
    let mut out = std::collections::BTreeSet::new();
    spinup_layers::merged_paths(&[root.clone()], Path::new(""), &mut out);
    let _ = std::fs::remove_dir_all(&base);
});
