// The JS SDK (npm `e2b`), unmodified, against Spinup (run by
// crates/cli/tests/e2b.rs with E2B_API_URL and E2B_SANDBOX_URL set).
import assert from 'node:assert/strict'
import { Sandbox, CommandExitError, NotFoundError } from 'e2b'

const template = process.argv[2]
const ok = (s) => console.log(`ok ${s}`)

const sbx = await Sandbox.create(template, { metadata: { suite: 'e2b-js' }, envs: { G: 'js' } })
ok('Sandbox.create')
const r = await sbx.commands.run('echo hi; echo $G; whoami')
assert.equal(r.stdout, 'hi\njs\nuser\n')
try {
  await sbx.commands.run('exit 4')
  assert.fail('should throw')
} catch (e) {
  assert.ok(e instanceof CommandExitError, String(e))
  assert.equal(e.exitCode, 4)
}
const chunks = []
await sbx.commands.run('for i in 1 2 3; do echo $i; sleep 0.1; done', { onStdout: (d) => chunks.push(d) })
assert.equal(chunks.join(''), '1\n2\n3\n')
const bg = await sbx.commands.run('sleep 60', { background: true })
assert.ok((await sbx.commands.list()).some((p) => p.pid === bg.pid))
assert.equal(await sbx.commands.kill(bg.pid), true)
ok('commands: run, exit codes, streaming, background, list, kill')
await sbx.files.write('js.txt', 'from js')
assert.equal(await sbx.files.read('js.txt'), 'from js')
assert.ok(await sbx.files.exists('js.txt'))
assert.ok((await sbx.files.list('.')).some((e) => e.name === 'js.txt'))
try {
  await sbx.files.read('nope.txt')
  assert.fail('should throw')
} catch (e) {
  assert.ok(e instanceof NotFoundError || /not found/i.test(String(e)), String(e))
}
ok('files: write, read, exists, list, missing')
await sbx.setTimeout(120_000)
const info = await sbx.getInfo()
assert.equal(info.sandboxId, sbx.sandboxId)
assert.equal(info.metadata.suite, 'e2b-js')
ok('setTimeout, getInfo')
await sbx.kill()
console.log('SCENARIO PASSED')
