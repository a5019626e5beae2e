//! Tests of the Deepgram stream's timeline (offsets, replay after a reconnect, overflow,
//! monotonic finals) and of how server closes are classified.

use super::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

fn audio(ms: usize) -> Vec<u8> {
    vec![0xFF; ms * 8]
}

fn send_ms(t: &mut Timeline, ms: usize) {
    t.queue(Pending::Audio(audio(ms)));
    while let Some(p) = t.next_pending() {
        if let Pending::Audio(b) = p {
            t.sent_audio(&b);
        }
    }
}

fn backlog_ms(t: &Timeline) -> usize {
    t.backlog_audio / 8
}

#[test]
fn times_are_offset_by_the_connection_base() {
    let mut t = Timeline::new(Duration::from_secs(5));
    assert_eq!(t.ms(1.234), 1234);
    assert_eq!(t.ms(-1.0), 0);
    assert_eq!(t.ms(f64::NAN), 0);
    t.base = 8 * 2_000;
    assert_eq!(t.ms(0.5), 2_500);
}

#[test]
fn a_reconnect_replays_what_was_not_finalized_and_starts_at_the_last_final() {
    let mut t = Timeline::new(Duration::from_secs(5));
    send_ms(&mut t, 3_000);
    t.finalized_to(1.2);
    assert_eq!(t.unfinal.len(), 1_800 * 8);
    t.disconnected();
    // 400 ms more arrive while reconnecting.
    t.queue(Pending::Audio(audio(400)));
    t.queue(Pending::Finalize);
    assert_eq!(backlog_ms(&t), 2_200);
    t.connected();
    assert_eq!(t.take_lost_ms(), 0);
    assert_eq!(t.base, 1_200 * 8);
    // The new connection's time 0 is the old one's 1.2 s.
    assert_eq!(t.ms(0.0), 1_200);
    let mut items = Vec::new();
    while let Some(p) = t.next_pending() {
        if let Pending::Audio(b) = &p {
            t.sent_audio(b);
        }
        items.push(p);
    }
    assert_eq!(items.last(), Some(&Pending::Finalize));
    assert_eq!(t.sent_ms(), 3_400);
    // Replayed in 1 s frames, then the buffered frame.
    let sizes: Vec<usize> = items
        .iter()
        .filter_map(|p| match p {
            Pending::Audio(b) => Some(b.len() / 8),
            Pending::Finalize => None,
        })
        .collect();
    assert_eq!(sizes, vec![1_000, 800, 400]);
}

#[test]
fn what_overflows_the_buffer_is_lost_and_shifts_the_base() {
    let mut t = Timeline::new(Duration::from_secs(1));
    // 3 s sent, nothing finalized: only the last second is kept.
    send_ms(&mut t, 3_000);
    t.disconnected();
    assert_eq!(backlog_ms(&t), 1_000);
    // 500 ms more while reconnecting push 500 ms of the replay out.
    t.queue(Pending::Audio(audio(500)));
    assert_eq!(backlog_ms(&t), 1_000);
    t.connected();
    assert_eq!(t.take_lost_ms(), 2_500);
    assert_eq!(t.take_lost_ms(), 0);
    // The next connection starts 2.5 s into the stream; the stream is 3.5 s long.
    assert_eq!(t.ms(0.0), 2_500);
    assert_eq!(t.ms(1.0), 3_500);
}

#[test]
fn finals_never_move_backwards_or_past_the_audio_sent() {
    let mut t = Timeline::new(Duration::from_secs(5));
    send_ms(&mut t, 1_000);
    t.finalized_to(0.6);
    t.finalized_to(0.4);
    assert_eq!(t.finalized, 600 * 8);
    t.finalized_to(9.0);
    assert_eq!(t.finalized, 1_000 * 8);
    assert!(t.unfinal.is_empty());
    t.disconnected();
    assert_eq!(t.take_lost_ms(), 0);
    assert_eq!(t.ms(0.0), 1_000);
}

#[test]
fn server_closes_are_classified() {
    let frame = |code: u16, reason: &str| {
        Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        })
    };
    assert_eq!(
        closed_by_server(frame(1011, "NET-0001")),
        End::Lost {
            cause: Cause::Closed,
            reason: "closed 1011 NET-0001".to_owned()
        }
    );
    assert_eq!(
        closed_by_server(frame(1008, "DATA-0000")),
        End::Fatal("closed 1008 DATA-0000".to_owned())
    );
    assert!(matches!(closed_by_server(None), End::Lost { reason, .. } if reason == "closed 1005"));
}
