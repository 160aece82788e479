//! Typed channels between the shards of one run, the same on every driver: shard `i`
//! holds a bounded sender to every other shard and a receiver from every other shard.
//! Wakeups cross threads through the tasks' wakers, which both drivers accept from a
//! foreign thread.

use async_channel::{Receiver, Sender};

/// One shard's place in the mesh.
pub struct MeshPeer<M> {
    pub senders: Senders<M>,
    pub receivers: Receivers<M>,
}

/// Builds the mesh of `shards` shards, each channel holding up to `capacity` messages;
/// element `i` belongs to shard `i`.
pub fn full<M>(shards: usize, capacity: usize) -> Vec<MeshPeer<M>> {
    assert!(capacity > 0, "a mesh channel holds at least one message");
    // channels[from][to]; none from a shard to itself.
    let mut senders: Vec<Vec<Option<Sender<M>>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    let mut receivers: Vec<Vec<Option<Receiver<M>>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (tx, rx) = async_channel::bounded(capacity);
                senders[from][to] = Some(tx);
                receivers[to][from] = Some(rx);
            }
        }
    }
    senders
        .into_iter()
        .zip(receivers)
        .enumerate()
        .map(|(id, (to, from))| MeshPeer {
            senders: Senders { id, to },
            receivers: Receivers { from },
        })
        .collect()
}

/// The receiving side of a mesh channel is gone: that shard has stopped.
#[derive(Debug)]
pub struct PeerGone(pub usize);

pub struct Senders<M> {
    id: usize,
    to: Vec<Option<Sender<M>>>,
}

// By hand: a derive would require `M: Clone`, and only the channel handles are cloned.
impl<M> Clone for Senders<M> {
    fn clone(&self) -> Self {
        Senders {
            id: self.id,
            to: self.to.clone(),
        }
    }
}

impl<M> Senders<M> {
    /// This shard's index in the mesh.
    pub fn peer_id(&self) -> usize {
        self.id
    }

    /// Sends `msg` to shard `peer`, waiting while its channel is full.
    pub async fn send_to(&self, peer: usize, msg: M) -> Result<(), PeerGone> {
        let tx = self.to[peer]
            .as_ref()
            .expect("a shard sends to another shard, never to itself");
        tx.send(msg).await.map_err(|_| PeerGone(peer))
    }

    /// Ends this shard's streams: each peer sees the end once it has read what was sent.
    pub fn close(&self) {
        for tx in self.to.iter().flatten() {
            tx.close();
        }
    }
}

pub struct Receivers<M> {
    from: Vec<Option<Receiver<M>>>,
}

impl<M> Receivers<M> {
    /// The next message from shard `peer`; `None` once it has closed its side or stopped.
    pub async fn recv_from(&self, peer: usize) -> Option<M> {
        self.from[peer]
            .as_ref()
            .expect("a shard receives from another shard, never from itself")
            .recv()
            .await
            .ok()
    }

    /// The receivers from every other shard, with their index, for one listener each.
    pub fn streams(&mut self) -> Vec<(usize, Receiver<M>)> {
        self.from
            .iter_mut()
            .enumerate()
            .filter_map(|(peer, rx)| rx.take().map(|rx| (peer, rx)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_is_connected_and_close_ends_the_stream() {
        let mut mesh = full::<u32>(3, 4);
        futures_lite::future::block_on(async {
            mesh[0].senders.send_to(2, 7).await.unwrap();
            mesh[1].senders.send_to(2, 8).await.unwrap();
            mesh[0].senders.close();
            assert_eq!(mesh[2].receivers.recv_from(0).await, Some(7));
            assert_eq!(mesh[2].receivers.recv_from(0).await, None);
            assert_eq!(mesh[2].receivers.recv_from(1).await, Some(8));
            let streams = mesh[2].receivers.streams();
            assert_eq!(
                streams.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
                vec![0, 1]
            );
        });
        assert_eq!(mesh[1].senders.peer_id(), 1);
    }

    #[test]
    fn a_stopped_shard_is_reported_to_its_senders() {
        let mut mesh = full::<u32>(2, 1);
        let gone = mesh.pop().expect("two peers");
        drop(gone);
        let r = futures_lite::future::block_on(mesh[0].senders.send_to(1, 1));
        assert!(matches!(r, Err(PeerGone(1))));
    }
}
