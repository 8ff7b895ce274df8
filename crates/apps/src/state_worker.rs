//! Computes state-tree versions off the apply thread.
//!
//! At a checkpoint marker the executor takes the changed state as the job of
//! that version; the worker hashes the new tree from a read snapshot that
//! already holds the previous version, and the executor writes the result in
//! a later apply step (or computes it in place when it cannot wait). Either
//! way the root is the same: it depends only on the changes and the version.

use comity_store::state::StateTreeUpdate;
use comity_store::{Store, StoreError};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

pub struct StateWorker {
    jobs: Option<mpsc::Sender<u64>>,
    results: Mutex<mpsc::Receiver<Result<StateTreeUpdate, StoreError>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StateWorker {
    /// Stops the thread and waits for it, so the store it holds is released.
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl StateWorker {
    pub fn spawn(store: Arc<Store>) -> std::io::Result<StateWorker> {
        let (jobs, job_rx) = mpsc::channel::<u64>();
        let (res_tx, results) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("state-tree".into())
            .spawn(move || {
                while let Ok(version) = job_rx.recv() {
                    let r = store.read().and_then(|r| r.compute_state_tree(version));
                    if res_tx.send(r).is_err() {
                        return;
                    }
                }
            })?;
        Ok(StateWorker {
            jobs: Some(jobs),
            results: Mutex::new(results),
            thread: Some(thread),
        })
    }

    pub(crate) fn dispatch(&self, version: u64) -> Result<(), StoreError> {
        self.jobs
            .as_ref()
            .and_then(|j| j.send(version).ok())
            .ok_or_else(|| StoreError::StateTree("the state-tree worker stopped".into()))
    }

    /// The result of the job in flight, if it is done.
    pub(crate) fn try_result(&self) -> Option<Result<StateTreeUpdate, StoreError>> {
        self.results.lock().expect("results lock").try_recv().ok()
    }

    /// Waits for the result of the job in flight.
    pub(crate) fn result(&self) -> Result<StateTreeUpdate, StoreError> {
        self.results
            .lock()
            .expect("results lock")
            .recv()
            .map_err(|_| StoreError::StateTree("the state-tree worker stopped".into()))?
    }
}
