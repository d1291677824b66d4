// The Node.js driver 7 and Mongoose 9, unchanged, against a real eddy started for the
// run (EDDY_BIN, default ../../target/release/eddy) on a free port with a temporary
// data directory. Run with `node --test`.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { createServer, connect } from 'node:net';
import { fileURLToPath } from 'node:url';
import { MongoClient } from 'mongodb';
import mongoose from 'mongoose';

const here = dirname(fileURLToPath(import.meta.url));
const bin = process.env.EDDY_BIN ?? join(here, '..', '..', 'target', 'release', 'eddy');
let server;
let dir;
let uri;

function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function listening(port) {
  for (let i = 0; i < 200; i++) {
    const ok = await new Promise((resolve) => {
      const c = connect(port, '127.0.0.1', () => { c.end(); resolve(true); });
      c.on('error', () => resolve(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 25));
  }
  throw new Error('eddy did not start');
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'eddy-node-'));
  const port = await freePort();
  server = spawn(bin, ['--port', String(port), '--dbpath', join(dir, 'data'), '--quiet'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  await listening(port);
  uri = `mongodb://127.0.0.1:${port}/?replicaSet=rs0`;
});

after(() => {
  server?.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

/** Resolves with the first `n` events of `stream`, or rejects after `ms`. */
function take(stream, n, ms = 10000) {
  return new Promise((resolve, reject) => {
    const got = [];
    const timer = setTimeout(() => reject(new Error(`only ${got.length} of ${n} events`)), ms);
    stream.on('change', (ev) => {
      got.push(ev);
      if (got.length === n) {
        clearTimeout(timer);
        resolve(got);
      }
    });
    stream.on('error', (e) => { clearTimeout(timer); reject(e); });
  });
}

test('node driver 7: CRUD, a change stream with updateLookup, a transaction', async () => {
  const client = new MongoClient(uri);
  await client.connect();
  try {
    const db = client.db('nodecompat');
    const c = db.collection('things');
    const stream = c.watch([{ $match: { operationType: { $in: ['insert', 'update'] } } }], {
      fullDocument: 'updateLookup',
    });
    const events = take(stream, 4);
    // The stream is open once its first getMore has gone out.
    await new Promise((r) => setTimeout(r, 300));
    const { insertedId } = await c.insertOne({ name: 'a', n: 1 });
    await c.insertMany([{ name: 'b', n: 2 }, { name: 'c', n: 3 }]);
    await c.updateOne({ _id: insertedId }, { $inc: { n: 10 }, $set: { tag: 'x' } });
    const evs = await events;
    assert.deepEqual(evs.map((e) => e.operationType), ['insert', 'insert', 'insert', 'update']);
    assert.deepEqual(evs.slice(0, 3).map((e) => e.fullDocument.name), ['a', 'b', 'c']);
    assert.equal(evs[3].fullDocument.n, 11);
    await stream.close();

    // The update, read from its resume token onwards with updateLookup.
    const again = c.watch([], { fullDocument: 'updateLookup', resumeAfter: evs[2]._id });
    const [u] = await take(again, 1);
    assert.equal(u.operationType, 'update');
    assert.deepEqual(u.updateDescription.updatedFields, { n: 11, tag: 'x' });
    assert.equal(u.fullDocument.n, 11);
    assert.equal(u.fullDocument.name, 'a');
    await again.close();

    assert.deepEqual(
      (await c.find({ n: { $gte: 2 } }).sort({ n: 1 }).project({ _id: 0, name: 1 }).toArray()),
      [{ name: 'b' }, { name: 'c' }, { name: 'a' }],
    );

    // withTransaction: both writes or neither.
    const session = client.startSession();
    try {
      await session.withTransaction(async () => {
        await c.insertOne({ name: 'd', n: 4 }, { session });
        await db.collection('ledger').insertOne({ thing: 'd' }, { session });
      });
      await assert.rejects(session.withTransaction(async () => {
        await c.insertOne({ name: 'e', n: 5 }, { session });
        throw new Error('abort');
      }), /abort/);
    } finally {
      await session.endSession();
    }
    assert.equal(await c.countDocuments({ name: 'd' }), 1);
    assert.equal(await c.countDocuments({ name: 'e' }), 0);
    assert.equal(await db.collection('ledger').countDocuments({}), 1);
  } finally {
    await client.close();
  }
});

test('mongoose 9: schema and model, populate, Model.watch, transactions, syncIndexes', async () => {
  const conn = await mongoose.createConnection(uri, { dbName: 'goosecompat' }).asPromise();
  try {
    const Author = conn.model('Author', new mongoose.Schema({
      name: { type: String, required: true },
      email: { type: String, index: { unique: true } },
    }));
    const Book = conn.model('Book', new mongoose.Schema({
      title: { type: String, required: true, minlength: 2 },
      pages: { type: Number, min: 1 },
      author: { type: mongoose.Schema.Types.ObjectId, ref: 'Author' },
      tags: [String],
    }, { timestamps: true }));
    await Author.init();
    await Book.init();

    const ann = await Author.create({ name: 'Ann', email: 'ann@example.com' });
    await assert.rejects(Author.create({ name: 'Dup', email: 'ann@example.com' }), /E11000/);
    await assert.rejects(Book.create({ title: 'x' }), /minimum allowed length/);

    // Model.watch with updateLookup sees the insert and the update, whole.
    const stream = Book.watch([], { fullDocument: 'updateLookup' });
    const events = take(stream, 2);
    await new Promise((r) => setTimeout(r, 300));
    const book = await Book.create({ title: 'Streams', pages: 100, author: ann._id, tags: ['db'] });
    await Book.updateOne({ _id: book._id }, { $set: { pages: 120 } });
    const [ins, upd] = await events;
    assert.equal(ins.operationType, 'insert');
    assert.equal(ins.fullDocument.title, 'Streams');
    assert.equal(upd.operationType, 'update');
    assert.equal(upd.updateDescription.updatedFields.pages, 120);
    assert.equal(upd.fullDocument.pages, 120);
    assert.equal(upd.fullDocument.author.toString(), ann._id.toString());
    await stream.close();

    // populate: the reference comes back as the author's document.
    const found = await Book.findOne({ title: 'Streams' }).populate('author').lean();
    assert.equal(found.author.name, 'Ann');
    assert.equal(found.pages, 120);
    assert.ok(found.createdAt instanceof Date && found.updatedAt >= found.createdAt);

    // A transaction through the connection's helper: committed, then one rolled back.
    await conn.transaction(async (session) => {
      await Book.create([{ title: 'In txn', pages: 5, author: ann._id }], { session });
      await Author.updateOne({ _id: ann._id }, { $set: { name: 'Ann B' } }, { session });
    });
    await assert.rejects(conn.transaction(async (session) => {
      await Book.create([{ title: 'Rolled back', pages: 5 }], { session });
      throw new Error('no');
    }), /no/);
    assert.equal(await Book.countDocuments({ title: 'In txn' }), 1);
    assert.equal(await Book.countDocuments({ title: 'Rolled back' }), 0);
    assert.equal((await Author.findById(ann._id)).name, 'Ann B');

    // syncIndexes: an index the schema gained is built, one it lost is dropped.
    await Book.collection.createIndex({ tags: 1 }, { name: 'stale_tags' });
    Book.schema.index({ title: 1, pages: -1 });
    const dropped = await Book.syncIndexes();
    assert.deepEqual(dropped, ['stale_tags']);
    const names = (await Book.collection.indexes()).map((i) => i.name).sort();
    assert.deepEqual(names, ['_id_', 'title_1_pages_-1']);
    assert.deepEqual(await Book.diffIndexes(), { toDrop: [], toCreate: [] });
  } finally {
    await conn.close();
  }
});
