// The event store of the SSE-polling mode (SEP-1699): the SDK's transport records every SSE event it sends here,
// and a client that reconnects with GET and Last-Event-ID is sent the events of that stream that came after it.
// In memory, bounded: a session's events are dropped with the session.

const MAX_EVENTS = 10000;

export class EventStore {
  constructor() {
    this.events = new Map(); // eventId -> { streamId, message }
    this.counter = 0;
  }

  async storeEvent(streamId, message) {
    const eventId = `${streamId}_${String(++this.counter).padStart(12, '0')}`;
    this.events.set(eventId, { streamId, message });
    if (this.events.size > MAX_EVENTS) this.events.delete(this.events.keys().next().value);
    return eventId;
  }

  async getStreamIdForEventId(eventId) {
    return this.events.get(eventId)?.streamId;
  }

  async replayEventsAfter(lastEventId, { send }) {
    const last = this.events.get(lastEventId);
    if (!last) return '';
    let after = false;
    for (const [eventId, { streamId, message }] of this.events) {
      if (eventId === lastEventId) {
        after = true;
        continue;
      }
      // Priming events carry no message: there is nothing to replay for them.
      if (after && streamId === last.streamId && message) await send(eventId, message);
    }
    return last.streamId;
  }
}
