//! Mutation fuzzing of what a node decodes from its peers: node-to-node frames (Raft messages and forwarded
//! requests), the ledger entries inside Raft entries, and snapshots. A Trusted peer is needed to send these, but
//! a bug in a decoder must still be an error, never a panic that stops the node. `FUZZ_ITERS=1000000 cargo test
//! --release -p synod-node --test fuzz` for a long run.

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use synod_core::ledger::{make_entry, Transaction, KIND_TX};
use synod_core::testing::{fuzz_inputs, fuzz_iterations};
use synod_core::txid::TxId;
use synod_kv::seal::{LedgerSecret, Sealer};
use synod_node::channels::{ForwardedRequest, PeerFrame};
use synod_node::consensus::ledger_entry_of;

fn sealer() -> Sealer {
    Sealer::new(&LedgerSecret([9; 32]))
}

#[test]
fn peer_frames_and_the_entries_in_them_never_panic_the_decoders() {
    let sealer = sealer();
    let tx = Transaction {
        view: 2,
        seqno: 7,
        kind: KIND_TX,
        public_writes: b"\x0a\x05hello".to_vec(),
        private_sealed: sealer.seal(TxId::new(2, 7), b"\x0a\x03abc").expect("seal"),
        ..Default::default()
    };
    let ledger_entry = make_entry(&tx, &sealer.commit_evidence(TxId::new(2, 7)), &[0; 32]);
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgAppend);
    msg.from = 1;
    msg.to = 2;
    let mut entry = Entry {
        term: 2,
        index: 7,
        ..Default::default()
    };
    entry.data = ledger_entry.encode_to_vec().into();
    msg.entries = vec![entry].into();
    let raft_frame = PeerFrame {
        from: 1,
        payload: msg.write_to_bytes().expect("encode"),
        ..Default::default()
    };
    let forward_frame = PeerFrame {
        from: 1,
        request: Some(ForwardedRequest {
            id: 3,
            method: "POST".into(),
            path_and_query: "/app/log/private".into(),
            body: br#"{"id":1,"msg":"x"}"#.to_vec(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let seeds = vec![raft_frame.encode_to_vec(), forward_frame.encode_to_vec()];
    let mut entries = 0u64;
    for input in fuzz_inputs(&seeds, fuzz_iterations(3_000), 4) {
        let Ok(frame) = PeerFrame::decode(input.as_slice()) else {
            continue;
        };
        let Ok(msg) = Message::parse_from_bytes(&frame.payload) else {
            continue;
        };
        for e in msg.get_entries() {
            entries += 1;
            if let Ok((le, tx)) = ledger_entry_of(e, &sealer) {
                let _ = le.write_set_digest_and_leaf();
                let _ = tx.public_write_set();
            }
        }
    }
    assert!(entries > 0, "some mutated frames still carry entries");
}

#[test]
fn mutated_snapshots_never_panic_the_decoder() {
    let sealer = sealer();
    let mut state = synod_kv::State::default();
    let writes = synod_core::ledger::MapWrites {
        name: "records".into(),
        writes: (0..20u8)
            .map(|i| synod_core::ledger::KeyWrite {
                key: vec![i],
                value: Some(vec![i; 10]),
            })
            .collect(),
    };
    let public = synod_core::ledger::MapWrites {
        name: "public:records".into(),
        writes: writes.writes.clone(),
    };
    state.apply(5, [&writes, &public]).expect("apply");
    let conf = raft::eraftpb::ConfState {
        voters: vec![1, 2, 3],
        ..Default::default()
    };
    let frontier = [[1u8; 32], [2u8; 32]];
    let bytes = synod_node::snapshot_codec::encode(
        &state,
        2,
        conf.write_to_bytes().expect("conf"),
        &frontier[..1],
        &[(1, 1), (2, 4)],
        &sealer,
    )
    .expect("encode");
    assert!(synod_node::snapshot_codec::decode(&bytes, &sealer).is_ok());
    for input in fuzz_inputs(&[bytes], fuzz_iterations(3_000), 5) {
        let _ = synod_node::snapshot_codec::raft_metadata_of(&input);
        let _ = synod_node::snapshot_codec::decode(&input, &sealer);
    }
}
