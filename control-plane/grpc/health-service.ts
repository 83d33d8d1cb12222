import { status, type Server, type ServerUnaryCall, type ServerWritableStream, type sendUnaryData } from '@grpc/grpc-js';
import { service as healthServiceDefinition } from 'grpc-health-check';

/** What grpc.health.v1 reports for one service name (the enum by name, as the package's descriptors load it). */
export type ServingStatus = 'SERVING' | 'NOT_SERVING';

interface HealthCheckRequest {
  service: string;
}

interface HealthCheckResponse {
  status: ServingStatus | 'SERVICE_UNKNOWN';
}

/**
 * The lifecycle of {@link HealthService}:
 * - `serving`: every known service answers SERVING.
 * - `draining`: shutdown has begun; every known service answers NOT_SERVING,
 *   and Watch streams are told so and then ended.
 */
export type HealthState = 'serving' | 'draining';

/**
 * `grpc.health.v1.Health` for `""` (the server as a whole) and each named
 * service, with a shutdown step. grpc-health-check's own implementation keeps
 * every Watch stream open for ever, and an open stream holds a graceful
 * shutdown until its grace runs out; this one ends them once it has told them
 * NOT_SERVING, so a drain waits only for real work.
 */
export class HealthService {
  readonly #services: readonly string[];
  readonly #watches = new Set<ServerWritableStream<HealthCheckRequest, HealthCheckResponse>>();
  #state: HealthState = 'serving';

  /** Serves `""` and each of `services`, all SERVING. */
  constructor(services: readonly string[]) {
    this.#services = ['', ...services];
  }

  /** `serving` or `draining`. */
  get state(): HealthState {
    return this.#state;
  }

  /** Registers Health/Check, Health/Watch and Health/List on `server`. */
  addToServer(server: Server): void {
    server.addService(healthServiceDefinition, {
      check: (call: ServerUnaryCall<HealthCheckRequest, HealthCheckResponse>, callback: sendUnaryData<HealthCheckResponse>) => {
        const known = this.#statusOf(call.request.service);
        if (known === undefined) callback({ code: status.NOT_FOUND, details: `Health status unknown for service ${call.request.service}` });
        else callback(null, { status: known });
      },
      watch: (call: ServerWritableStream<HealthCheckRequest, HealthCheckResponse>) => {
        call.write({ status: this.#statusOf(call.request.service) ?? 'SERVICE_UNKNOWN' });
        if (this.#state === 'draining') {
          call.end();
          return;
        }
        this.#watches.add(call);
        const forget = (): void => {
          this.#watches.delete(call);
        };
        call.once('cancelled', forget);
        call.once('finish', forget);
      },
      list: (_call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<{ statuses: Record<string, { status: ServingStatus }> }>) => {
        const statuses: Record<string, { status: ServingStatus }> = {};
        for (const name of this.#services) statuses[name] = { status: this.#servingStatus() };
        callback(null, { statuses });
      },
    });
  }

  /**
   * Shutdown begins: every service reports NOT_SERVING from now on; each open
   * Watch is sent NOT_SERVING and ended. Idempotent.
   */
  drain(): void {
    if (this.#state === 'draining') return;
    this.#state = 'draining';
    for (const call of this.#watches) {
      call.write({ status: this.#statusOf(call.request.service) ?? 'SERVICE_UNKNOWN' });
      call.end();
    }
    this.#watches.clear();
  }

  #statusOf(service: string): ServingStatus | undefined {
    return this.#services.includes(service) ? this.#servingStatus() : undefined;
  }

  #servingStatus(): ServingStatus {
    return this.#state === 'serving' ? 'SERVING' : 'NOT_SERVING';
  }
}
