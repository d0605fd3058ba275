#!/usr/bin/env node
// Compile a Solidity contract with the pinned solc-js into the JSON artifact that Python loads.
//
//   node ledger/anchor/js/compile.js                      # AuditAnchor.sol -> AuditAnchor.json
//   node ledger/anchor/js/compile.js SRC.sol NAME OUT.json
//   node ledger/anchor/js/compile.js SRC.sol NAME -       # artifact on stdout
//
// The output is a pure function of the source text and the solc version: the settings are fixed
// here, the source is keyed by its base name (never its path), and bytecodeHash "none" drops the
// metadata hash, so comments and checkout paths do not change the bytecode.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const solc = require('solc');

const anchorDir = path.resolve(__dirname, '..');
const [src = path.join(anchorDir, 'AuditAnchor.sol'), name = 'AuditAnchor', out] = process.argv.slice(2);
const target = out ?? path.join(path.dirname(src), `${name}.json`);

// paris: no PUSH0, so the artifact also runs on chains that stop before shanghai.
const settings = {
  optimizer: { enabled: true, runs: 200 },
  evmVersion: 'paris',
  metadata: { bytecodeHash: 'none' },
  outputSelection: { '*': { '*': ['abi', 'evm.bytecode.object', 'evm.deployedBytecode.object'] } },
};

const unit = path.basename(src);
const input = { language: 'Solidity', sources: { [unit]: { content: fs.readFileSync(src, 'utf8') } }, settings };
const output = JSON.parse(solc.compile(JSON.stringify(input)));

const diagnostics = output.errors ?? [];
for (const d of diagnostics) process.stderr.write(d.formattedMessage);
if (diagnostics.some((d) => d.severity === 'error')) process.exit(1);

const contract = output.contracts?.[unit]?.[name];
if (!contract) {
  process.stderr.write(`${unit} defines no contract named ${name}\n`);
  process.exit(1);
}

// Fixed key order: the committed file is compared byte for byte by tests/ledger.
const artifact = {
  contractName: name,
  compiler: { name: 'solc-js', version: solc.version() },
  settings: {
    optimizer: settings.optimizer,
    evmVersion: settings.evmVersion,
    metadata: settings.metadata,
  },
  abi: contract.abi,
  bytecode: `0x${contract.evm.bytecode.object}`,
  deployedBytecode: `0x${contract.evm.deployedBytecode.object}`,
};
const text = `${JSON.stringify(artifact, null, 2)}\n`;

if (target === '-') {
  process.stdout.write(text);
} else {
  fs.writeFileSync(target, text);
  process.stderr.write(`wrote ${path.relative(process.cwd(), target)} (${solc.version()})\n`);
}
