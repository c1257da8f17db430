//! Patches of any field names and JSON values, built and applied by the SQLite and memory
//! stores: an error or a write that loads back exactly, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use typed_session::store::Patch;
use typed_session::{MemoryStore, SqliteStore, Store};

fuzz_target!(|fields: Vec<(String, String)>| {
    // Only JSON values: the runtime never writes anything else.
    let fields: Vec<(String, String)> = fields
        .into_iter()
        .filter(|(_, v)| serde_json::from_str::<serde_json::Value>(v).is_ok())
        .take(64)
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let sqlite = SqliteStore::connect("sqlite::memory:").await.expect("memory");
        sqlite.migrate().await.expect("migrate");
        let stores: [Box<dyn Store>; 2] = [Box::new(sqlite), Box::new(MemoryStore::new())];
        for store in stores {
            let patch = fields
                .iter()
                .fold(Patch::new(), |patch, (name, value)| patch.set_field(name, value.clone()));
            if store.apply("k", &patch).await.is_err() {
                continue;
            }
            let Ok(Some(record)) = store.load("k").await else {
                continue;
            };
            // The last value given for each name is what a load returns, as JSON.
            for (name, value) in &fields {
                let last = fields.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v);
                if last == Some(value) {
                    let stored: serde_json::Value =
                        serde_json::from_str(&record[name.as_str()]).expect("stored JSON");
                    let given: serde_json::Value = serde_json::from_str(value).expect("JSON");
                    assert_eq!(stored, given, "field {name:?}");
                }
            }
        }
    });
});
