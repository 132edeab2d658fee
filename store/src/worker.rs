//! Background threads owned by the structure that feeds them: when the owner goes away the
//! thread's queue closes and the owner waits for the thread to finish. Nothing of the store
//! (a RocksDB handle in particular) then outlives its owner on some thread of its own, which
//! would race RocksDB's teardown at process exit.

use std::sync::mpsc;
use std::thread::JoinHandle;

use crate::error::{Result, StoreError};

pub struct Worker<T: Send + 'static> {
    tx: Option<mpsc::Sender<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Starts a thread running `serve` over the queue of requests.
    pub fn spawn<F>(name: &str, serve: F) -> Result<Worker<T>>
    where
        F: FnOnce(mpsc::Receiver<T>) + Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || serve(rx))
            .map_err(|e| StoreError::Internal(format!("cannot start thread {name}: {e}")))?;
        Ok(Worker { tx: Some(tx), thread: Some(thread) })
    }

    /// Queues a request; gives it back if the thread has stopped.
    pub fn send(&self, item: T) -> std::result::Result<(), T> {
        match &self.tx {
            Some(tx) => tx.send(item).map_err(|e| e.0),
            None => Err(item),
        }
    }
}

impl<T: Send + 'static> Drop for Worker<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}
