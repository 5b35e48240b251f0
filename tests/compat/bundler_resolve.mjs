// ooo-client is published for bundlers: it does `import { applyPatch } from 'fast-json-patch'`, a
// named import that Node cannot take from fast-json-patch's CommonJS main. Bundlers (the package's
// authors use rollup) pick the package's ES-module build instead; this resolve hook does the same,
// so the unmodified package runs in Node. Load with `node --import ./bundler_resolve.mjs ...`.
import { register } from 'node:module'

const hooks = `export async function resolve(specifier, context, next) {
  return next(specifier === 'fast-json-patch' ? 'fast-json-patch/index.mjs' : specifier, context)
}`
register('data:text/javascript,' + encodeURIComponent(hooks))
