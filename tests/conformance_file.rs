//! The conformance suite against the file store, on a fresh temporary directory.
//!
//! Every handle is a separate `FileStore` opened on the same directory, as separate processes
//! would open it.

use std::path::PathBuf;

use tenure::conformance::{async_trait, Harness, Timings};
use tenure::file::FileStore;

struct Files {
    // Keeps the directory alive for the test's duration.
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        Files {
            dir: tempfile::Builder::new()
                .prefix("tenure-conformance-")
                .tempdir_in(scratch())
                .expect("a temporary directory"),
        }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

/// Where the suite's directories go: `/dev/shm` (memory) where it exists. The suite checks the
/// store's semantics, not the disk: on a small CI machine whose disk is also busy with the other
/// backends' servers (etcd, ZooKeeper), an fsync can stall for longer than a renew deadline.
/// The file store's durability on a real disk is exercised by its unit tests and the quickstart.
fn scratch() -> PathBuf {
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    }
}

#[async_trait]
impl Harness for Files {
    type Store = FileStore;

    async fn store(&self) -> FileStore {
        FileStore::open(self.path()).expect("the test directory opens")
    }

    async fn write_garbage(&self, name: &str) {
        let store = FileStore::open(self.path()).expect("the test directory opens");
        let path = store.path_of(name).expect("a name the file store can hold");
        std::fs::write(path, b"{\"holder\": 42, this is not a tenure record")
            .expect("garbage written");
    }

    /// Twice the default lease and deadline: every write is a flock, a write, an fsync and a
    /// rename, which a busy 2-core CI machine can hold up for a few hundred milliseconds.
    fn timings(&self) -> Timings {
        Timings::default().scaled(2)
    }
}

tenure::conformance_tests!(Files::new());
