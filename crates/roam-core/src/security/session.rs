//! A session: the keys a completed handshake gave, the send counter (the nonce, sent
//! as the header's Replay Protect ID), and the receive replay window (RFC 4303 §3.4.3).

use roam_wire::{DecodeError, EncodeError, Frame, Message, NodeId, SessionKey};

use crate::endpoint::replay::{ReplayCheck, ReplayWindow};
use crate::time::Instant;

/// Why a sealed message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpenError {
    Replayed,
    Decode(DecodeError),
    /// The header names another sender than the session's peer.
    WrongSender,
}

pub struct Session {
    pub peer: NodeId,
    /// Our index: the SPI of messages to us in this session.
    pub local_index: u32,
    /// The peer's index: the SPI of messages we send.
    pub remote_index: u32,
    send: SessionKey,
    recv: SessionKey,
    next_counter: u64,
    replay: ReplayWindow,
    pub established: Instant,
    /// Messages sealed so far.
    pub sent: u64,
    /// Set when a newer session replaced this one for sending. It still opens what the
    /// peer seals under it, and is dropped once nothing has come under it for the
    /// grace period (both ends may have started a handshake at once, and each may
    /// prefer a different one for a while).
    pub retired_at: Option<Instant>,
    /// When a message last opened under it.
    pub last_received: Instant,
}

impl Session {
    pub fn new(
        peer: NodeId,
        local_index: u32,
        remote_index: u32,
        send: SessionKey,
        recv: SessionKey,
        now: Instant,
    ) -> Session {
        Session {
            peer,
            local_index,
            remote_index,
            send,
            recv,
            next_counter: 0,
            replay: ReplayWindow::default(),
            established: now,
            sent: 0,
            retired_at: None,
            last_received: now,
        }
    }

    /// Seals `msg`, numbering it with this session's next nonce.
    pub fn seal(&mut self, mut msg: Message) -> Result<Vec<u8>, EncodeError> {
        msg.header.replay_id = self.next_counter;
        self.next_counter += 1;
        self.sent += 1;
        msg.seal(self.remote_index, &self.send)
    }

    /// Opens a sealed message: the replay window is checked first (cheap), the tag
    /// next, and the window moves only for an authentic message.
    pub fn open(&mut self, frame: &Frame<'_>, now: Instant) -> Result<Message, OpenError> {
        let id = frame.header().replay_id;
        if self.replay.check(id) == ReplayCheck::Replayed {
            return Err(OpenError::Replayed);
        }
        let msg = frame.open(&self.recv).map_err(OpenError::Decode)?;
        if msg.header.sender != self.peer {
            return Err(OpenError::WrongSender);
        }
        self.replay.record(id);
        self.last_received = now;
        Ok(msg)
    }

    /// Opens without recording (for tests that inspect what was sent).
    #[cfg(test)]
    pub(crate) fn decrypt(&self, frame: &Frame<'_>) -> Result<Message, DecodeError> {
        frame.open(&self.recv)
    }
}
