// Cross-check: verify an Estampille .ots proof with javascript-opentimestamps, against an
// Esplora-compatible explorer given on the command line (the library's CLI is hard-wired
// to a public explorer, so this goes through the library).
//
//   node verify-ots.js RECORD.json RECORD.json.ots ESPLORA_URL
//
// Prints one JSON line ({"bitcoin": {"height": H, "timestamp": T}} on success) and exits
// 0 when a Bitcoin attestation verifies, 1 otherwise.
'use strict'

const fs = require('node:fs')
const OpenTimestamps = require('opentimestamps')

async function main ([recordPath, proofPath, esploraUrl]) {
  const original = OpenTimestamps.DetachedTimestampFile.fromBytes(
    new OpenTimestamps.Ops.OpSHA256(), fs.readFileSync(recordPath))
  const stamped = OpenTimestamps.DetachedTimestampFile.deserialize(fs.readFileSync(proofPath))
  if (!OpenTimestamps.Utils.arrEq(original.fileDigest(), stamped.fileDigest())) {
    throw new Error('record does not match the proof')
  }
  // verifyTimestamp, not verify: verify would first ask calendars for upgrades.
  const result = await OpenTimestamps.verifyTimestamp(stamped.timestamp, {
    ignoreBitcoinNode: true,
    url: esploraUrl,
    esplora: { url: esploraUrl },
    timeout: 5000
  })
  console.log(JSON.stringify(result))
  return result.bitcoin ? 0 : 1
}

main(process.argv.slice(2)).then(code => process.exit(code), err => {
  console.log(JSON.stringify({ error: err.message }))
  process.exit(1)
})
