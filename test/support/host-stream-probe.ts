import * as grpc from '@grpc/grpc-js';
import { HostServiceClient, type ControlMessage, type HostMessage } from '../../gen/tether/v1/host.js';
import { nextEvent } from './wait.js';

/**
 * Opens a raw `HostService.Connect` stream with `metadata`, sends one envelope
 * that is not a Hello (a Ping), and resolves with the status the stream ends
 * with. A stream whose credential is refused ends UNAUTHENTICATED; one whose
 * credential is accepted gets as far as the envelope check and ends
 * INVALID_ARGUMENT ("the first envelope must be Hello"). No Hello is sent, so
 * no host session is created and a live host with the same identity is not
 * superseded. The client is closed before this resolves.
 */
export async function probeHostConnect(target: string, metadata: grpc.Metadata): Promise<grpc.StatusObject> {
  const client = new HostServiceClient(target, grpc.credentials.createInsecure());
  try {
    const stream: grpc.ClientDuplexStream<HostMessage, ControlMessage> = client.connect(metadata);
    const ended = nextEvent<grpc.StatusObject>(stream, 'status');
    // The status carries the outcome; the error event duplicates it.
    stream.on('error', () => undefined);
    stream.write({ ping: { timeMs: 1 } });
    return await ended;
  } finally {
    client.close();
  }
}
