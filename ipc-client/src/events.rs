//! The client's buffer of events the application has not taken yet: bounded in bytes, sans-IO.
//!
//! The reader task pushes every event here without waiting, so replies are never stuck behind
//! events. When the application does not keep up and the buffer is full, the oldest *data*
//! events (`message`) are dropped, counted per endpoint and announced by an
//! [`Event::ClientLagged`] before the next event handed out: the same rule the daemon applies
//! to its own queue for a slow client (PROTOCOL.md section 10). Every other event (state
//! changes, errors, `sent`/`dropped` reports, the daemon's `lagged`) is kept; if those alone
//! fill the buffer, the application has stopped reading altogether and the connection ends.
//!
//! While the client resubscribes after a reconnect, the events of the new connection are held
//! behind a barrier ([`EventBuffer::hold`]) until the `reconnected` event that must come first
//! is known ([`EventBuffer::release`]); held events count against the bound like any other.

use std::collections::VecDeque;

use wsmux_proto::Lagged;

use crate::Event;

/// The smallest byte bound accepted: room for a few ordinary events.
pub(crate) const MIN_BYTES: usize = 64 * 1024;

/// One queued event with its place in arrival order and its size.
#[derive(Debug)]
struct Entry {
    /// Arrival number; merges the two queues back into arrival order.
    order: u64,
    /// Bytes charged to the bound (the event's frame length on the wire).
    size: usize,
    /// The event.
    event: Event,
}

/// Undroppable events alone exceed the bound: the application stopped reading.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Overflow {
    /// Bytes the undroppable events already held.
    pub(crate) held: usize,
}

/// Unread events, bounded in bytes. See the module documentation.
#[derive(Debug)]
pub(crate) struct EventBuffer {
    /// Upper bound of `used`, in bytes.
    limit: usize,
    /// Bytes held by `data` and `other` together.
    used: usize,
    /// Bytes held by `data` alone.
    data_used: usize,
    /// Arrival number of the next event.
    next_order: u64,
    /// Droppable events (`message`), oldest first.
    data: VecDeque<Entry>,
    /// Every other event, oldest first.
    other: VecDeque<Entry>,
    /// Messages dropped here and not yet announced, per endpoint, in order of the first drop.
    lagged: Vec<(String, u64)>,
    /// The arrival number kept for the event [`EventBuffer::release`] will put there: nothing
    /// that arrived after it is handed out before it.
    barrier: Option<u64>,
}

impl EventBuffer {
    /// An empty buffer holding at most `limit` bytes (at least [`MIN_BYTES`]).
    pub(crate) fn new(limit: usize) -> EventBuffer {
        EventBuffer {
            limit: limit.max(MIN_BYTES),
            used: 0,
            data_used: 0,
            next_order: 0,
            data: VecDeque::new(),
            other: VecDeque::new(),
            lagged: Vec::new(),
            barrier: None,
        }
    }

    /// Queues `event`, charged `size` bytes, never waiting. Makes room by dropping the oldest
    /// data events; a data event that still does not fit is dropped itself (and counted).
    /// An undroppable event that does not fit even then is refused with [`Overflow`].
    pub(crate) fn push(&mut self, event: Event, size: usize) -> Result<(), Overflow> {
        let droppable = matches!(event, Event::Message(_));
        let undroppable = self.used - self.data_used;
        if undroppable + size > self.limit {
            // Dropping every message queued would not make room. Messages of other endpoints
            // stay; this endpoint's queued ones go too, so that everything announced as
            // dropped is older than what is still queued (the notice comes first).
            return match event {
                Event::Message(m) => {
                    let (mut freed, mut count) = (0, 1);
                    self.data.retain(|e| match &e.event {
                        Event::Message(q) if q.endpoint == m.endpoint => {
                            freed += e.size;
                            count += 1;
                            false
                        }
                        _ => true,
                    });
                    self.used -= freed;
                    self.data_used -= freed;
                    self.count_drops(m.endpoint, count);
                    Ok(())
                }
                _ => Err(Overflow { held: undroppable }),
            };
        }
        while self.used + size > self.limit {
            let Some(oldest) = self.data.pop_front() else {
                break;
            };
            self.used -= oldest.size;
            self.data_used -= oldest.size;
            if let Event::Message(m) = oldest.event {
                self.count_drop(m.endpoint);
            }
        }
        let entry = Entry {
            order: self.next_order,
            size,
            event,
        };
        self.next_order += 1;
        self.used += size;
        if droppable {
            self.data_used += size;
            self.data.push_back(entry);
        } else {
            self.other.push_back(entry);
        }
        Ok(())
    }

    /// Queues an undroppable event even past the bound: the one last notice before the
    /// connection ends.
    pub(crate) fn push_final(&mut self, event: Event) {
        let entry = Entry {
            order: self.next_order,
            size: 0,
            event,
        };
        self.next_order += 1;
        self.other.push_back(entry);
    }

    /// Holds every event pushed from now on until [`EventBuffer::release`] puts the one
    /// that comes before them. Holding again while held changes nothing.
    pub(crate) fn hold(&mut self) {
        if self.barrier.is_none() {
            self.barrier = Some(self.next_order);
            self.next_order += 1;
        }
    }

    /// Puts `event` (undroppable, charged `size` bytes even past the bound: it replaces no
    /// frame) where [`EventBuffer::hold`] was called, and hands out what was held after it.
    /// Without a hold, `event` is queued last.
    pub(crate) fn release(&mut self, event: Event, size: usize) {
        let order = match self.barrier.take() {
            Some(order) => order,
            None => {
                self.next_order += 1;
                self.next_order - 1
            }
        };
        let at = self.other.partition_point(|e| e.order < order);
        self.used += size;
        self.other.insert(at, Entry { order, size, event });
    }

    /// The next event for the application: pending client-side `lagged` notices first, then
    /// the oldest event, as long as it is not held behind a barrier.
    pub(crate) fn pop(&mut self) -> Option<Event> {
        let from_data = match (self.data.front(), self.other.front()) {
            (Some(d), Some(o)) => d.order < o.order,
            (Some(_), None) => true,
            _ => false,
        };
        let next = if from_data {
            self.data.front()
        } else {
            self.other.front()
        }
        .map(|e| e.order);
        if let Some(barrier) = self.barrier {
            // While held, only what arrived before the barrier comes out.
            if next.is_none_or(|order| order > barrier) {
                return None;
            }
        }
        if !self.lagged.is_empty() {
            let (endpoint, dropped) = self.lagged.remove(0);
            return Some(Event::ClientLagged(Lagged { endpoint, dropped }));
        }
        next?;
        let entry = if from_data {
            let entry = self.data.pop_front()?;
            self.data_used -= entry.size;
            entry
        } else {
            self.other.pop_front()?
        };
        self.used -= entry.size;
        Some(entry.event)
    }

    /// Bytes held now.
    #[cfg(test)]
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    fn count_drop(&mut self, endpoint: String) {
        self.count_drops(endpoint, 1);
    }

    fn count_drops(&mut self, endpoint: String, n: u64) {
        match self.lagged.iter_mut().find(|(e, _)| *e == endpoint) {
            Some((_, count)) => *count += n,
            None => self.lagged.push((endpoint, n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use wsmux_proto::{ConnState, DataMessage, Payload, Sent, StateEvent};

    use super::*;

    fn msg(endpoint: &str, seq: u64) -> Event {
        Event::Message(DataMessage {
            topic: None,
            topic_seq: None,
            endpoint: endpoint.into(),
            seq,
            data: Payload::Text(String::new()),
        })
    }

    fn state(endpoint: &str) -> Event {
        Event::State(StateEvent::new(endpoint, ConnState::Open))
    }

    fn drain(b: &mut EventBuffer) -> Vec<Event> {
        std::iter::from_fn(|| b.pop()).collect()
    }

    fn lagged(endpoint: &str, dropped: u64) -> Event {
        Event::ClientLagged(Lagged {
            endpoint: endpoint.into(),
            dropped,
        })
    }

    #[test]
    fn within_the_bound_everything_comes_out_in_arrival_order() {
        let mut b = EventBuffer::new(MIN_BYTES);
        b.push(msg("a", 1), 100).unwrap();
        b.push(state("a"), 100).unwrap();
        b.push(msg("a", 2), 100).unwrap();
        assert_eq!(b.used(), 300);
        assert_eq!(drain(&mut b), vec![msg("a", 1), state("a"), msg("a", 2)]);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_messages_and_announces_them_first() {
        let unit = MIN_BYTES / 4;
        let mut b = EventBuffer::new(MIN_BYTES);
        b.push(msg("a", 1), unit).unwrap();
        b.push(state("a"), unit).unwrap();
        b.push(msg("b", 1), unit).unwrap();
        b.push(msg("a", 2), unit).unwrap();
        // Full: each new message pushes out the oldest one, whatever its endpoint.
        b.push(msg("a", 3), unit).unwrap();
        b.push(msg("b", 2), unit).unwrap();
        assert_eq!(b.used(), MIN_BYTES);
        assert_eq!(
            drain(&mut b),
            vec![
                lagged("a", 1),
                lagged("b", 1),
                state("a"),
                msg("a", 2),
                msg("a", 3),
                msg("b", 2)
            ]
        );
    }

    #[test]
    fn state_and_reports_are_kept_and_make_room_by_dropping_messages() {
        let unit = MIN_BYTES / 2;
        let mut b = EventBuffer::new(MIN_BYTES);
        b.push(msg("a", 1), unit).unwrap();
        b.push(msg("a", 2), unit).unwrap();
        b.push(state("a"), unit).unwrap();
        b.push(
            Event::Sent(Sent {
                id: Some(7),
                endpoint: "a".into(),
            }),
            unit,
        )
        .unwrap();
        let events = drain(&mut b);
        assert_eq!(events[0], lagged("a", 2));
        assert_eq!(events[1], state("a"));
        assert!(matches!(events[2], Event::Sent(Sent { id: Some(7), .. })));
        assert_eq!(events.len(), 3);
    }

    #[test]
    fn a_message_larger_than_the_room_left_is_dropped_itself() {
        let mut b = EventBuffer::new(MIN_BYTES);
        b.push(state("a"), MIN_BYTES - 10).unwrap();
        b.push(msg("a", 1), 11).unwrap();
        assert_eq!(drain(&mut b), vec![lagged("a", 1), state("a")]);
    }

    #[test]
    fn a_message_that_cannot_fit_at_all_takes_only_older_ones_of_its_endpoint_along() {
        let mut b = EventBuffer::new(MIN_BYTES);
        b.push(state("a"), MIN_BYTES / 2).unwrap();
        b.push(msg("b", 1), MIN_BYTES / 4).unwrap();
        b.push(msg("a", 1), MIN_BYTES / 8).unwrap();
        b.push(msg("a", 2), MIN_BYTES).unwrap();
        assert_eq!(b.used(), MIN_BYTES / 2 + MIN_BYTES / 4);
        assert_eq!(drain(&mut b), vec![lagged("a", 2), state("a"), msg("b", 1)]);
        b.push(msg("a", 3), 10).unwrap();
        assert_eq!(drain(&mut b), vec![msg("a", 3)]);
    }

    #[test]
    fn undroppable_events_beyond_the_bound_are_an_overflow() {
        let mut b = EventBuffer::new(MIN_BYTES);
        b.push(state("a"), MIN_BYTES).unwrap();
        assert_eq!(b.push(state("a"), 1), Err(Overflow { held: MIN_BYTES }));
        b.push_final(Event::Error(wsmux_proto::ErrorMsg {
            endpoint: None,
            topic: None,
            id: None,
            code: wsmux_proto::ErrorCode::Lagged,
            message: "gone".into(),
        }));
        let events = drain(&mut b);
        assert_eq!(events.len(), 2);
        assert!(matches!(events[1], Event::Error(_)));
    }

    #[test]
    fn counts_accumulate_until_announced_and_restart_after() {
        let unit = MIN_BYTES;
        let mut b = EventBuffer::new(MIN_BYTES);
        for seq in 1..=5 {
            b.push(msg("a", seq), unit).unwrap();
        }
        assert_eq!(drain(&mut b), vec![lagged("a", 4), msg("a", 5)]);
        b.push(msg("a", 6), unit).unwrap();
        b.push(msg("a", 7), unit).unwrap();
        assert_eq!(drain(&mut b), vec![lagged("a", 1), msg("a", 7)]);
    }

    #[test]
    fn held_events_wait_for_the_event_that_comes_before_them() {
        let mut b = EventBuffer::new(MIN_BYTES);
        b.push(msg("a", 1), 10).unwrap();
        b.hold();
        b.push(msg("a", 2), 10).unwrap();
        b.push(state("a"), 10).unwrap();
        assert_eq!(b.pop(), Some(msg("a", 1)), "what came before is not held");
        assert_eq!(b.pop(), None);
        b.hold();
        b.push(msg("a", 3), 10).unwrap();
        b.release(lagged("first", 0), 10);
        assert_eq!(b.used(), 40);
        assert_eq!(
            drain(&mut b),
            vec![lagged("first", 0), msg("a", 2), state("a"), msg("a", 3)]
        );
        assert_eq!(b.used(), 0);
        // Without a hold, the event is simply queued last.
        b.push(msg("a", 4), 10).unwrap();
        b.release(lagged("last", 0), 10);
        assert_eq!(drain(&mut b), vec![msg("a", 4), lagged("last", 0)]);
    }

    #[test]
    fn held_messages_count_against_the_bound() {
        let unit = MIN_BYTES / 2;
        let mut b = EventBuffer::new(MIN_BYTES);
        b.hold();
        for seq in 1..=3 {
            b.push(msg("a", seq), unit).unwrap();
        }
        assert_eq!(b.used(), MIN_BYTES);
        assert_eq!(
            b.pop(),
            None,
            "nothing comes out while held, not even the notice"
        );
        b.release(state("b"), 0);
        assert_eq!(
            drain(&mut b),
            vec![lagged("a", 1), state("b"), msg("a", 2), msg("a", 3)]
        );
    }

    #[test]
    fn the_bound_has_a_floor() {
        let mut b = EventBuffer::new(0);
        b.push(state("a"), 1000).unwrap();
        assert_eq!(drain(&mut b), vec![state("a")]);
    }
}
