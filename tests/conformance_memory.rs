//! The conformance suite against the in-process [`MemoryStore`].

use tenure::conformance::{async_trait, Harness};
use tenure::MemoryStore;

/// One shared in-memory "server"; every handle is a clone.
#[derive(Default)]
struct Memory(MemoryStore);

#[async_trait]
impl Harness for Memory {
    type Store = MemoryStore;

    async fn store(&self) -> MemoryStore {
        self.0.clone()
    }

    async fn write_garbage(&self, name: &str) {
        self.0.put_raw(name, &b"\x00 not a tenure record"[..]);
    }
}

tenure::conformance_tests!(Memory::default());
