//! The digest of the event log: SHA-256 over a canonical binary encoding of
//! every engine event in order (`seq` excluded: the store assigns it). It is
//! computed on a second thread, so hashing costs the engine thread nothing.

use drover_model::{Event, EventSubject};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Batches in flight between the engine thread and the hasher.
const QUEUE_BATCHES: usize = 4;

/// Bytes of encoded events sent to the hasher at once.
const CHUNK: usize = 1 << 20;

/// Events are encoded on the engine thread (a copy, and their memory is
/// freed by the thread that allocated it) and hashed on another.
pub struct EventLog {
    buf: Vec<u8>,
    events: u64,
    dump: Option<Box<dyn Write + Send>>,
    tx: Option<SyncSender<Vec<u8>>>,
    spare: Receiver<Vec<u8>>,
    worker: Option<JoinHandle<String>>,
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
    pub fn start(dump: Option<Box<dyn Write + Send>>) -> EventLog {
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_BATCHES);
        let (give_back, spare) = sync_channel::<Vec<u8>>(QUEUE_BATCHES);
        let worker = std::thread::spawn(move || {
            let mut hasher = Sha256::new();
            for mut chunk in rx {
                hasher.update(&chunk);
                chunk.clear();
                let _ = give_back.try_send(chunk);
            }
            hex::encode(hasher.finalize())
        });
        EventLog { buf: Vec::with_capacity(CHUNK), events: 0, dump, tx: Some(tx), spare, worker: Some(worker) }
    }

    pub fn push(&mut self, events: &[Event]) {
        for e in events {
            encode(e, &mut self.buf);
            if let Some(w) = self.dump.as_mut() {
                let _ = serde_json::to_writer(&mut *w, e);
                let _ = w.write_all(b"\n");
            }
            // Sent as it fills, not after the whole slice: one engine step
            // can emit hundreds of thousands of events, and a buffer grown
            // to hold them all stays that size for the rest of the run.
            if self.buf.len() >= CHUNK {
                self.flush();
            }
        }
        self.events += events.len() as u64;
    }

    fn flush(&mut self) {
        let next = self.spare.try_recv().unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let chunk = std::mem::replace(&mut self.buf, next);
        if let Some(tx) = &self.tx {
            let _ = tx.send(chunk);
        }
    }

    /// The hex digest and the number of events.
    pub fn finish(mut self) -> (String, u64) {
        self.flush();
        if let Some(w) = self.dump.as_mut() {
            let _ = w.flush();
        }
        drop(self.tx.take());
        let digest = self.worker.take().and_then(|w| w.join().ok()).unwrap_or_default();
        (digest, self.events)
    }
}
