//! The translation primitive: original tuple <-> current tuple (seed 000 ¶0047-¶0055).
//!
//! - [`tuple`]: connection specifications and the changes a data plane obeys;
//! - [`table`]: the table, indexed both ways;
//! - [`rewrite`]: the per-packet rewriter (`fast`: its path for plain TCP/UDP packets);
//! - [`checksum`]: RFC 1071 / RFC 1624 arithmetic.

pub mod checksum;
mod fast;
pub mod rewrite;
pub mod table;
pub mod tuple;

pub use rewrite::{Direction, PacketError, PacketFlow, Verdict, packet_flow, translate};
pub use table::{TableError, TranslationTable};
pub use tuple::{AddressMapping, FlowMapping, Protocol, Side, TableChange, Tuple};
