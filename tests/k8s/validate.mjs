// tests/k8s/validate.mjs - validates Kubernetes objects offline against the API schemas
// (npm kubernetes-models, and @kubernetes-models/prometheus-operator for PodMonitor):
//   kubectl kustomize deploy/k8s/overlays/dc-a | node tests/k8s/validate.mjs /dev/stdin
// One line per object ("ok Kind/name" or "FAIL Kind/name: why"), "FILE: N passed, N failed" after
// each file, then "N passed, N failed" for all; exit status 1 when any failed or none was found.
import { readFileSync } from "node:fs";
import { parseAllDocuments } from "yaml";
import * as core from "kubernetes-models";
import * as promop from "@kubernetes-models/prometheus-operator";

const groups = { ...core, ...promop };
const groupKey = (g) => g.replace(/\.([a-z])/g, (_, c) => c.toUpperCase()); // networking.k8s.io -> networkingK8sIo
let bad = 0, n = 0;
for (const file of process.argv.slice(2)) {
  const n0 = n, bad0 = bad;
  for (const doc of parseAllDocuments(readFileSync(file, "utf8"))) {
    if (doc.errors.length) { n++; bad++; console.log(`FAIL ${file}: YAML: ${doc.errors[0].message}`); continue; }
    const obj = doc.toJS();
    if (!obj) continue;
    n++;
    const av = String(obj.apiVersion ?? "");
    const [g, v] = av.includes("/") ? av.split("/") : ["", av];
    const Cls = (g ? groups[groupKey(g)]?.[v] : groups[v])?.[obj.kind];
    const name = `${obj.kind}/${obj.metadata?.name}`;
    // kustomize folds a Secret's base64 over lines; the API server's decoder skips newlines.
    if (obj.kind === "Secret" && obj.data)
      for (const k of Object.keys(obj.data)) obj.data[k] = String(obj.data[k]).replace(/\s+/g, "");
    if (!Cls) { bad++; console.log(`FAIL ${name}: no schema for ${av} ${obj.kind}`); continue; }
    try { new Cls(obj).validate(); console.log(`ok   ${name}`); }
    catch (e) { bad++; console.log(`FAIL ${name}: ${e.message}`); }
  }
  console.log(`${file}: ${n - n0 - (bad - bad0)} passed, ${bad - bad0} failed`);
}
console.log(`${n - bad} passed, ${bad} failed`);
process.exit(bad || n === 0 ? 1 : 0);
