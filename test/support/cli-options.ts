/** Walking a commander program in tests: its commands, their paths, and the options that read an environment variable as a boolean. */
import type { Command, Option } from 'commander';

/** Every command under `command`, itself included. */
export function allCommands(command: Command): Command[] {
  return [command, ...command.commands.flatMap(allCommands)];
}

/** The words that run `command` (`['hosts', 'enroll']`; none for the program). */
export function pathOf(command: Command): string[] {
  return command.parent === null ? [] : [...pathOf(command.parent), command.name()];
}

/** Every boolean option with an environment variable, anywhere in `program`, with the command that owns it. */
export function booleanEnvOptions(program: Command): { command: Command; option: Option }[] {
  return allCommands(program).flatMap((command) =>
    command.options.filter((option) => option.envVar !== undefined && (option.isBoolean() || option.negate)).map((option) => ({ command, option })),
  );
}

/** Values a boolean variable may hold, what each means (undefined: refused), per `parseBooleanEnv`. */
export const BOOLEAN_ENV_VALUES: readonly [string, boolean | undefined][] = [
  ['true', true],
  ['1', true],
  ['yes', true],
  ['TRUE', true],
  ['Yes', true],
  ['false', false],
  ['0', false],
  ['no', false],
  ['FALSE', false],
  ['', false],
  ['on', undefined],
  ['off', undefined],
  ['2', undefined],
  [' true', undefined],
  ['canary-not-a-boolean-7f3a', undefined],
];
