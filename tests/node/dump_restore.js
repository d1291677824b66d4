// A dump and restore round trip through a tool that replays listIndexes
// (npm @apostrophecms/mongodb-snapshot), as a user moving a database would run it.
// mongodb-snapshot copies documents and indexes; the collection options (validators) it
// does not copy are replayed from listCollections first, as mongorestore does.
// Exits non-zero on any difference. Usage: EDDY_PORT=... node dump_restore.js
const assert = require('assert');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { MongoClient } = require('mongodb');
const snapshot = require('@apostrophecms/mongodb-snapshot');

const strip = ({ ns, ...rest }) => rest;
const byName = (a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);

async function main() {
  const uri = `mongodb://127.0.0.1:${process.env.EDDY_PORT}/?directConnection=true`;
  const client = await MongoClient.connect(uri);
  try {
    const src = client.db('snap_src');
    const dst = client.db('snap_dst');
    await src.dropDatabase();
    await dst.dropDatabase();

    // Source: https://www.mongodb.com/docs/v8.0/core/schema-validation/specify-json-schema/
    const validator = {
      $jsonSchema: {
        bsonType: 'object',
        title: 'Student Object Validation',
        required: ['address', 'major', 'name', 'year'],
        properties: {
          name: { bsonType: 'string', description: "'name' must be a string and is required" },
          year: { bsonType: 'int', minimum: 2017, maximum: 3017, description: "'year' must be an integer in [ 2017, 3017 ] and is required" },
          gpa: { bsonType: ['double'], description: "'gpa' must be a double if the field exists" },
        },
      },
    };
    await src.createCollection('students', { validator, validationLevel: 'strict', validationAction: 'error' });
    const students = src.collection('students');
    const docs = [];
    for (let i = 0; i < 200; i++) {
      docs.push({ _id: i, name: `student ${i}`, year: 2017 + (i % 10), major: ['History', 'Math'][i % 2], address: { city: `c${i % 7}` }, gpa: i + 0.5 });
    }
    await students.insertMany(docs);
    await students.createIndex({ name: 1 }, { unique: true });
    await students.createIndex({ major: 1, year: -1 }, { name: 'major_year' });
    await students.createIndex({ gpa: 1 }, { partialFilterExpression: { gpa: { $gt: 100 } } });
    await students.createIndex({ 'address.city': 1 }, { sparse: true, collation: { locale: 'en', strength: 2 } });
    await src.collection('plain').insertMany([{ _id: 'a', n: 1 }, { _id: 'b', n: [1, 2] }]);

    const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'eddy-snap-')), 'dump.jsonl');
    await snapshot.write(src, file);
    const infos = await src.listCollections().toArray();

    // Restore: collection options first, then documents and indexes from the snapshot.
    for (const info of infos) {
      await dst.createCollection(info.name, info.options);
    }
    await snapshot.read(dst, file);

    for (const info of infos) {
      const a = src.collection(info.name);
      const b = dst.collection(info.name);
      assert.deepStrictEqual(await b.find().sort({ _id: 1 }).toArray(), await a.find().sort({ _id: 1 }).toArray(), `${info.name}: documents`);
      const ia = (await a.listIndexes().toArray()).map(strip).sort(byName);
      const ib = (await b.listIndexes().toArray()).map(strip).sort(byName);
      assert.deepStrictEqual(ib, ia, `${info.name}: indexes`);
    }
    const [restored] = await dst.listCollections({ name: 'students' }).toArray();
    assert.deepStrictEqual(restored.options, infos.find((i) => i.name === 'students').options);

    // The restored validator and unique index are enforced.
    await assert.rejects(dst.collection('students').insertOne({ _id: 999, name: 'x', year: 1999, major: 'History', address: {} }), (e) => e.code === 121);
    await assert.rejects(dst.collection('students').insertOne({ _id: 998, name: 'student 1', year: 2020, major: 'History', address: {} }), (e) => e.code === 11000);
    console.log(`dump/restore round trip: ${infos.length} collections, ${docs.length + 2} documents, indexes and validator restored`);
  } finally {
    await client.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
