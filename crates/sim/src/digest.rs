//! The digest of the event log: SHA-256 over a canonical binary encoding of
//! every engine event in order (`seq` excluded: the store assigns it). It is
//! computed on a second thread, so hashing costs the engine thread nothing.

use drover_model::{Event, EventSubject};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// Batches in flight between the engine thread and the hasher.
const QUEUE_BATCHES: usize = 64;

/// Events sent to the hasher at once.
const BATCH: usize = 8192;

pub struct EventLog {
    pending: Vec<Event>,
    tx: Option<SyncSender<Vec<Event>>>,
    worker: Option<JoinHandle<(String, u64)>>,
}

pub fn encode(e: &Event, buf: &mut Vec<u8>) {
    fn s(buf: &mut Vec<u8>, v: Option<&str>) {
        match v {
            Some(v) => {
                buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
                buf.extend_from_slice(v.as_bytes());
            }
            None => buf.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
    }
    fn id(buf: &mut Vec<u8>, v: Option<&uuid_bytes::Bytes>) {
        match v {
            Some(b) => {
                buf.push(1);
                buf.extend_from_slice(b);
            }
            None => buf.push(0),
        }
    }
    buf.extend_from_slice(&e.at.0.to_le_bytes());
    buf.push(match e.subject {
        EventSubject::Instance => 0,
        EventSubject::Service => 1,
        EventSubject::Action => 2,
        EventSubject::Fleet => 3,
    });
    s(buf, e.service.as_deref());
    id(buf, e.service_id.as_ref().map(|i| i.0.as_bytes()));
    id(buf, e.instance.as_ref().map(|i| i.0.as_bytes()));
    id(buf, e.action.as_ref().map(|i| i.0.as_bytes()));
    s(buf, e.from.as_deref());
    s(buf, e.to.as_deref());
    s(buf, Some(&e.cause));
}

mod uuid_bytes {
    pub type Bytes = [u8; 16];
}

impl EventLog {
    /// `dump`: also write every event as one JSON line (small runs only).
    pub fn start(mut dump: Option<Box<dyn Write + Send>>) -> EventLog {
        let (tx, rx) = sync_channel::<Vec<Event>>(QUEUE_BATCHES);
        let worker = std::thread::spawn(move || {
            let mut hasher = Sha256::new();
            let mut buf = Vec::with_capacity(1 << 16);
            let mut n = 0u64;
            for batch in rx {
                buf.clear();
                for e in &batch {
                    encode(e, &mut buf);
                    if let Some(w) = dump.as_mut() {
                        let _ = serde_json::to_writer(&mut *w, e);
                        let _ = w.write_all(b"\n");
                    }
                }
                n += batch.len() as u64;
                hasher.update(&buf);
            }
            if let Some(w) = dump.as_mut() {
                let _ = w.flush();
            }
            (hex::encode(hasher.finalize()), n)
        });
        EventLog { pending: Vec::with_capacity(BATCH), tx: Some(tx), worker: Some(worker) }
    }

    pub fn push(&mut self, events: Vec<Event>) {
        self.pending.extend(events);
        if self.pending.len() >= BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        let batch = std::mem::replace(&mut self.pending, Vec::with_capacity(BATCH));
        if let Some(tx) = &self.tx {
            let _ = tx.send(batch);
        }
    }

    /// The hex digest and the number of events.
    pub fn finish(mut self) -> (String, u64) {
        self.flush();
        drop(self.tx.take());
        self.worker.take().and_then(|w| w.join().ok()).unwrap_or_else(|| (String::new(), 0))
    }
}
