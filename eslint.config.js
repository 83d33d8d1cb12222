// @ts-check
import js from '@eslint/js';
import tseslint from 'typescript-eslint';
import { importX } from 'eslint-plugin-import-x';
import { createTypeScriptImportResolver } from 'eslint-import-resolver-typescript';

const timeBan = [
  { selector: "CallExpression[callee.object.name='Date'][callee.property.name='now']", message: 'Read time through the injected Clock.' },
  { selector: "NewExpression[callee.name='Date'][arguments.length=0]", message: 'Read time through the injected Clock.' },
  { selector: "CallExpression[callee.name='setTimeout']", message: 'Wait through the injected Clock.' },
  { selector: "CallExpression[callee.name='setInterval']", message: 'Wait through the injected Clock.' },
];

export default tseslint.config(
  { ignores: ['node_modules/**', 'gen/**', '.tether/**', 'dist/**', 'coverage/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: { allowDefaultProject: ['eslint.config.js', 'bin/*.js', 'examples/*.mjs', 'test/support/*.mjs', 'scripts/support/*.mjs'], maximumDefaultProjectFileMatchCount_THIS_WILL_SLOW_DOWN_LINTING: 16 }, tsconfigRootDir: import.meta.dirname },
    },
    plugins: { 'import-x': importX },
    settings: { 'import-x/resolver-next': [createTypeScriptImportResolver({ project: './tsconfig.json' })] },
    rules: {
      '@typescript-eslint/no-floating-promises': ['error', { ignoreVoid: false }],
      '@typescript-eslint/consistent-type-imports': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      eqeqeq: ['error', 'always'],
      'import-x/no-mutable-exports': 'error',
      'import-x/no-cycle': 'error',
      'import-x/no-default-export': 'error',
      'import-x/no-restricted-paths': [
        'error',
        {
          zones: [
            { target: './control-plane', from: './agent-host', message: 'control-plane and agent-host never import each other.' },
            { target: './agent-host', from: './control-plane', message: 'control-plane and agent-host never import each other.' },
            { target: './common', from: ['./control-plane', './agent-host'], message: 'common is a leaf.' },
            {
              target: './agent-host/tools',
              from: './agent-host',
              except: ['./tools'],
              message: 'the tool library imports generated code, common and its own files only.',
            },
            { target: './gen', from: ['./control-plane', './agent-host', './common'] },
          ],
        },
      ],
    },
  },
  {
    files: ['common/**/*.ts', 'control-plane/**/*.ts', 'agent-host/**/*.ts'],
    ignores: ['common/clock.ts'],
    rules: { 'no-restricted-syntax': ['error', ...timeBan] },
  },
  {
    files: ['**/*.js', '**/*.mjs', 'scripts/**/*.ts', 'test/**/*.ts', 'examples/**/*'],
    rules: {
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      'import-x/no-default-export': 'off',
    },
  },
  {
    files: ['**/*.js', '**/*.mjs'],
    languageOptions: { globals: { process: 'readonly', console: 'readonly', Buffer: 'readonly', setImmediate: 'readonly', setInterval: 'readonly' } },
  },
  {
    files: ['vitest.config.ts', 'eslint.config.js'],
    rules: { 'import-x/no-default-export': 'off' },
  },
);
