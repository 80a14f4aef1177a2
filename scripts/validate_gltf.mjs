#!/usr/bin/env node
// Validate glTF 2.0 files (.glb or .gltf) with the Khronos glTF Validator: the npm package gltf-validator, which
// `make setup` (scripts/setup.sh) installs into .node/ at the repository root (GLTF_VALIDATOR_PREFIX: another
// npm prefix that has it).
//
//   node scripts/validate_gltf.mjs FILE [FILE ...]
//
// Prints the validator's report of each file as one JSON object per line (issues.numErrors, numWarnings,
// numInfos, numHints, messages). Exit code: 0 when no file has an error, 1 when one has (or, with --strict before
// the files, a warning), 2 when a file cannot be read, 3 when the validator is not installed.
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const prefix = process.env.GLTF_VALIDATOR_PREFIX || path.join(root, ".node");
let validator;
try {
  validator = createRequire(path.join(prefix, "package.json"))("gltf-validator");
} catch {
  console.error(`gltf-validator is not installed under ${prefix} (run make setup, or npm install --prefix ${prefix} gltf-validator)`);
  process.exit(3);
}

const args = process.argv.slice(2);
const strict = args[0] === "--strict";
const files = strict ? args.slice(1) : args;
if (files.length === 0) {
  console.error("usage: node scripts/validate_gltf.mjs [--strict] FILE [FILE ...]");
  process.exit(2);
}
let failed = false;
for (const file of files) {
  let bytes;
  try {
    bytes = new Uint8Array(readFileSync(file));
  } catch (e) {
    console.error(`${file}: ${e.message}`);
    process.exit(2);
  }
  let report;
  try {
    report = await validator.validateBytes(bytes, { uri: path.basename(file), maxIssues: 0 });
  } catch (e) {
    console.error(`${file}: the validator could not read it (${String(e).split("\n")[0]})`);
    process.exit(2);
  }
  console.log(JSON.stringify(report));
  if (report.issues.numErrors > 0 || (strict && report.issues.numWarnings > 0)) failed = true;
}
process.exit(failed ? 1 : 0);
