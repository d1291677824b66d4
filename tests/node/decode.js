// Reads a JSON array of resume token hex strings on stdin and prints, as JSON, what
// MongoDB's decoder (npm mongodb-resumetoken-decoder) makes of each.
const { decodeResumeToken } = require('mongodb-resumetoken-decoder');

let input = '';
process.stdin.on('data', (c) => { input += c; });
process.stdin.on('end', () => {
  const out = JSON.parse(input).map((hex) => {
    const t = decodeResumeToken(hex);
    return {
      t: t.timestamp.getHighBits(),
      i: t.timestamp.getLowBits(),
      version: t.version,
      tokenType: t.tokenType,
      txnOpIndex: t.txnOpIndex,
      fromInvalidate: t.fromInvalidate,
      uuid: t.uuid ? Buffer.from(t.uuid.buffer).toString('hex') : null,
      eventIdentifier: t.eventIdentifier === undefined ? null : t.eventIdentifier,
    };
  });
  process.stdout.write(JSON.stringify(out));
});
