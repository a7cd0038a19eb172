// Offline validation of Weft's Kubernetes manifests, with no API server:
//
//   node validate.mjs DAEMONSET_DIR
//
// 1. Composition: every kustomization.yaml under DAEMONSET_DIR (the base and daemonset/uninstall) is composed
//    the way `kubectl apply -k` would, restricted to what these kustomizations use (`resources` of files and
//    directories); anything else in a kustomization is an error, so the composition here cannot drift from
//    kustomize's. Every YAML file outside examples/ must belong to some kustomization.
// 2. Schemas: each built-in object is checked against the Kubernetes OpenAPI schema (kubernetes-models: types,
//    required fields, enums, formats such as quantities) and for unknown fields, as `kubectl apply`'s strict
//    field validation does (field names from @kubernetes/client-node's generated models, a second source).
//    Custom resources (examples/) are checked against their CRD's own openAPIV3Schema with ajv; each CRD's
//    schema must be structural. Gateway API objects (the gateway's GatewayClass; the CRDs are installed by the
//    user from upstream, not shipped here) are checked against @kubernetes-models/gateway-api, which is
//    generated from the upstream CRDs' schemas.
// 3. Admission rules the OpenAPI schema cannot express, and Weft's own contract (read-only cluster role, ...).
//
// Prints one line per problem and exits 1 when there is any; exits 0 with a summary otherwise.
// daemonset/alerts and daemonset/dashboards belong to the monitoring work and are not read here.
import * as fs from "node:fs";
import * as path from "node:path";
import { parseAllDocuments } from "yaml";
import Ajv from "ajv";

const ownedElsewhere = new Set(["alerts", "dashboards"]);
const samplesDir = "examples";

const root = path.resolve(process.argv[2] ?? "");
if (!process.argv[2] || !fs.existsSync(path.join(root, "kustomization.yaml"))) {
  console.error("usage: node validate.mjs DAEMONSET_DIR (a directory with kustomization.yaml)");
  process.exit(2);
}

const problems = [];
const problem = (where, message) => problems.push(`${where}: ${message}`);
const rel = (file) => path.relative(root, file) || ".";
const describe = (o) => `${o.kind ?? "?"}/${o.metadata?.name ?? "?"}`;

// ---- 1. composition -------------------------------------------------------------------------------------

function readObjects(file) {
  const docs = parseAllDocuments(fs.readFileSync(file, "utf8"), { prettyErrors: true });
  const objects = [];
  for (const doc of docs) {
    for (const e of doc.errors) problem(rel(file), `YAML: ${e.message}`);
    for (const w of doc.warnings) problem(rel(file), `YAML: ${w.message}`);
    if (doc.errors.length > 0) continue;
    const value = doc.toJS({ maxAliasCount: 0 });
    if (value === null || value === undefined) continue;
    if (typeof value !== "object" || Array.isArray(value)) {
      problem(rel(file), "a document is not a mapping");
      continue;
    }
    objects.push({ file, object: value });
  }
  return objects;
}

const usedFiles = new Set();

function compose(dir, seen = new Set()) {
  const kfile = path.join(dir, "kustomization.yaml");
  if (seen.has(kfile)) {
    problem(rel(kfile), "kustomization includes itself");
    return [];
  }
  seen.add(kfile);
  usedFiles.add(kfile);
  const [entry] = readObjects(kfile);
  const k = entry?.object ?? {};
  for (const key of Object.keys(k)) {
    if (!["apiVersion", "kind", "resources"].includes(key)) {
      problem(rel(kfile), `field '${key}' is not composed by this validator; keep kustomizations to 'resources' or teach validate.mjs`);
    }
  }
  if (k.apiVersion !== "kustomize.config.k8s.io/v1beta1" || k.kind !== "Kustomization") {
    problem(rel(kfile), "expected apiVersion kustomize.config.k8s.io/v1beta1, kind Kustomization");
  }
  const objects = [];
  for (const resource of k.resources ?? []) {
    const target = path.resolve(dir, resource);
    if (!target.startsWith(root)) {
      problem(rel(kfile), `resource '${resource}' is outside ${root}`);
    } else if (!fs.existsSync(target)) {
      problem(rel(kfile), `resource '${resource}' does not exist`);
    } else if (fs.statSync(target).isDirectory()) {
      objects.push(...compose(target, seen));
    } else {
      usedFiles.add(target);
      objects.push(...readObjects(target));
    }
  }
  return objects;
}

function walkFiles(dir, out = []) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, e.name);
    if (e.isDirectory()) {
      if (!(dir === root && ownedElsewhere.has(e.name)) && e.name !== "node_modules") walkFiles(full, out);
    } else if (/\.ya?ml$/.test(e.name)) {
      out.push(full);
    }
  }
  return out;
}

const allYaml = walkFiles(root);
const kustomizationDirs = allYaml.filter((f) => path.basename(f) === "kustomization.yaml").map(path.dirname);
// Only roots: a kustomization another one includes as a directory is composed inside it.
const included = new Set();
for (const dir of kustomizationDirs) {
  const k = parseAllDocuments(fs.readFileSync(path.join(dir, "kustomization.yaml"), "utf8"))[0]?.toJS() ?? {};
  for (const resource of Array.isArray(k.resources) ? k.resources : []) {
    const target = path.resolve(dir, String(resource));
    if (fs.existsSync(path.join(target, "kustomization.yaml"))) included.add(target);
  }
}
const sets = new Map();
for (const dir of kustomizationDirs) if (!included.has(dir)) sets.set(dir, compose(dir));
const samples = allYaml.filter((f) => rel(f).split(path.sep)[0] === samplesDir).flatMap(readObjects);
for (const file of allYaml) {
  if (!usedFiles.has(file) && rel(file).split(path.sep)[0] !== samplesDir) {
    problem(rel(file), "not part of any kustomization (kubectl apply -k would never apply it)");
  }
}

// ---- 2. schemas -----------------------------------------------------------------------------------------

const clientModels = path.join(path.dirname(new URL(import.meta.url).pathname), "node_modules/@kubernetes/client-node/dist/gen/models");

async function builtInModel(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const modulePath = group === "gateway.networking.k8s.io" ? `@kubernetes-models/gateway-api/${group}/${version}/${kind}`
    : group ? `kubernetes-models/${group}/${version}/${kind}` : `kubernetes-models/${version}/${kind}`;
  try {
    const module = await import(modulePath);
    return module[kind];
  } catch {
    return undefined;
  }
}

const modelCache = new Map();
async function attributeMap(typeName) {
  if (!modelCache.has(typeName)) {
    const file = path.join(clientModels, `${typeName}.js`);
    let map = null;
    if (fs.existsSync(file)) {
      const module = await import(file);
      map = module[typeName]?.getAttributeTypeMap?.() ?? null;
    }
    modelCache.set(typeName, map);
  }
  return modelCache.get(typeName);
}

// Unknown fields, the way the API server's strict field validation reports them.
async function unknownFields(value, typeName, at, report) {
  if (value === null || value === undefined) return;
  let m;
  if ((m = /^Array<(.+)>$/.exec(typeName))) {
    if (Array.isArray(value)) for (let i = 0; i < value.length; i++) await unknownFields(value[i], m[1], `${at}[${i}]`, report);
    return;
  }
  if ((m = /^\{ \[key: string\]: (.+); \}$/.exec(typeName))) {
    if (typeof value === "object") for (const [k, v] of Object.entries(value)) await unknownFields(v, m[1], `${at}.${k}`, report);
    return;
  }
  const map = await attributeMap(typeName);
  if (!map || typeof value !== "object" || Array.isArray(value)) return; // scalars, any, IntOrString: the schema check covers them
  const known = new Map(map.map((a) => [a.baseName, a.type]));
  for (const [k, v] of Object.entries(value)) {
    if (!known.has(k)) report(`${at}.${k}: unknown field`);
    else await unknownFields(v, known.get(k), `${at}.${k}`, report);
  }
}

function modelTypeName(apiVersion, kind) {
  const version = apiVersion.split("/").pop();
  return version[0].toUpperCase() + version.slice(1) + kind;
}

// A CRD's schema as the API server sees it, plus: objects with declared properties reject other fields
// (kubectl's strict validation fails on fields a structural schema would prune).
function strictSchema(schema) {
  if (Array.isArray(schema)) return schema.map(strictSchema);
  if (schema === null || typeof schema !== "object") return schema;
  const out = {};
  for (const [k, v] of Object.entries(schema)) out[k] = k === "enum" || k === "default" || k === "example" ? v : strictSchema(v);
  if (schema.type === "object" && schema.properties && schema.additionalProperties === undefined && !schema["x-kubernetes-preserve-unknown-fields"]) {
    out.additionalProperties = false;
  }
  return out;
}

// The parts of "structural schema" (apiextensions.k8s.io/v1) a hand-written CRD most easily gets wrong.
function structuralProblems(schema, at, report) {
  if (schema === null || typeof schema !== "object") return;
  const free = schema["x-kubernetes-preserve-unknown-fields"] || schema["x-kubernetes-int-or-string"];
  if (!schema.type && !free) report(`${at}: no type (not a structural schema)`);
  if (schema.properties && schema.additionalProperties !== undefined) report(`${at}: properties and additionalProperties together`);
  if (schema.type === "array" && !schema.items) report(`${at}: array without items`);
  for (const [k, v] of Object.entries(schema.properties ?? {})) structuralProblems(v, `${at}.properties.${k}`, report);
  if (typeof schema.additionalProperties === "object") structuralProblems(schema.additionalProperties, `${at}.additionalProperties`, report);
  if (schema.items) structuralProblems(schema.items, `${at}.items`, report);
}

const ajv = new Ajv({ allErrors: true, strict: true, strictTypes: false });
for (const keyword of ["x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string", "x-kubernetes-list-type",
  "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-embedded-resource", "x-kubernetes-validations"]) {
  ajv.addKeyword(keyword);
}

const crdValidators = new Map(); // "group/version/Kind" -> ajv function

async function checkBuiltIn({ file, object }) {
  const where = `${rel(file)}: ${describe(object)}`;
  const Model = await builtInModel(object.apiVersion, object.kind);
  if (!Model) return false;
  try {
    new Model(object).validate();
  } catch (e) {
    problem(where, `schema: ${e.message}`);
  }
  await unknownFields(object, modelTypeName(object.apiVersion, object.kind), "", (m) => problem(where, `schema: ${m.slice(1)}`));
  return true;
}

function registerCrd({ file, object }) {
  const where = `${rel(file)}: ${describe(object)}`;
  const spec = object.spec ?? {};
  if (object.metadata?.name !== `${spec.names?.plural}.${spec.group}`) problem(where, "metadata.name must be <plural>.<group>");
  for (const v of spec.versions ?? []) {
    const schema = v.schema?.openAPIV3Schema;
    if (!schema) {
      problem(where, `version ${v.name} has no openAPIV3Schema`);
      continue;
    }
    structuralProblems(schema, `${v.name}.openAPIV3Schema`, (m) => problem(where, m));
    try {
      crdValidators.set(`${spec.group}/${v.name}/${spec.names?.kind}`, ajv.compile(strictSchema(schema)));
    } catch (e) {
      problem(where, `version ${v.name} schema does not compile: ${e.message}`);
    }
  }
}

async function checkCustom({ file, object }) {
  const where = `${rel(file)}: ${describe(object)}`;
  const validate = crdValidators.get(`${object.apiVersion}/${object.kind}`);
  if (!validate) return false;
  if (!validate(object)) {
    for (const e of validate.errors) {
      const detail = e.keyword === "enum" ? `${e.message}: ${e.params.allowedValues.join(", ")}`
        : e.keyword === "additionalProperties" ? `unknown field ${e.params.additionalProperty}` : e.message;
      problem(where, `CRD schema: ${e.instancePath || "/"}: ${detail}`);
    }
  }
  await unknownFields(object.metadata, "V1ObjectMeta", "metadata", (m) => problem(where, `schema: ${m}`));
  return true;
}

// ---- 3. admission rules and Weft's contract -------------------------------------------------------------

const readVerbs = new Set(["get", "list", "watch"]);

// A controller reports status: patch on a status subresource, and no other verb there, is the one write allowed.
const statusVerbs = new Set(["patch"]);

function podSpecRules(where, spec, objectsInSet) {
  const volumes = new Set((spec.volumes ?? []).map((v) => v.name));
  const containers = [...(spec.initContainers ?? []), ...(spec.containers ?? [])];
  for (const c of containers) {
    const sc = c.securityContext ?? {};
    const at = `${where}: container ${c.name}`;
    if (sc.privileged === true) problem(at, "privileged: true (Weft runs with named capabilities only)");
    const added = sc.capabilities?.add ?? [];
    for (const cap of added) if (/^CAP_/.test(cap)) problem(at, `capability ${cap}: write it without CAP_`);
    if (sc.allowPrivilegeEscalation === false && added.includes("SYS_ADMIN")) {
      problem(at, "allowPrivilegeEscalation: false with SYS_ADMIN is rejected by the API server");
    }
    for (const m of c.volumeMounts ?? []) {
      if (!volumes.has(m.name)) problem(at, `volumeMount ${m.name} names no volume`);
      if (m.mountPropagation === "Bidirectional" && sc.privileged !== true) {
        problem(at, `volumeMount ${m.name}: Bidirectional propagation is admitted only for privileged containers`);
      }
    }
    for (const e of c.env ?? []) {
      const ref = e.valueFrom?.configMapKeyRef;
      if (ref && !ref.optional) {
        const cm = objectsInSet.find((o) => o.kind === "ConfigMap" && o.metadata?.name === ref.name);
        if (!cm) problem(at, `env ${e.name}: ConfigMap ${ref.name} is not in the set`);
        else if (!(ref.key in (cm.data ?? {}))) problem(at, `env ${e.name}: ConfigMap ${ref.name} has no key ${ref.key}`);
      }
    }
    if (spec.hostNetwork) {
      for (const p of c.ports ?? []) problem(at, `port ${p.containerPort}: declared ports on a hostNetwork pod are host ports and block the surge pod`);
    }
  }
  if (spec.serviceAccountName && !objectsInSet.some((o) => o.kind === "ServiceAccount" && o.metadata?.name === spec.serviceAccountName)) {
    problem(where, `serviceAccountName ${spec.serviceAccountName} is not in the set`);
  }
}

function argValue(args, flag) {
  const i = args.indexOf(flag);
  if (i >= 0) return args[i + 1];
  const inline = args.find((a) => a.startsWith(`${flag}=`));
  return inline?.slice(flag.length + 1);
}

// An agent that sends its token to the CA (--ca-token-file) reads it from a projected serviceAccountToken volume
// whose audience is the one the CA Deployment checks (--token-audience, default weft-ca): anything else fails
// every TokenReview in the cluster, never here.
function caTokenRules(where, container, podSpec, objects) {
  const file = argValue(container.args ?? [], "--ca-token-file");
  if (file === undefined) return;
  const mount = (container.volumeMounts ?? []).find((m) => file.startsWith(m.mountPath.replace(/\/?$/, "/")));
  const volume = mount && (podSpec.volumes ?? []).find((v) => v.name === mount.name);
  const relative = mount && file.slice(mount.mountPath.replace(/\/?$/, "/").length);
  const source = volume?.projected?.sources?.find((s) => s.serviceAccountToken?.path === relative)?.serviceAccountToken;
  if (!source) {
    problem(where, `container ${container.name}: --ca-token-file ${file} is not a projected serviceAccountToken in its volumes`);
    return;
  }
  for (const ca of objects.filter((o) => o.kind === "Deployment")) {
    const args = ca.spec?.template?.spec?.containers?.flatMap((c) => c.args ?? []) ?? [];
    if (!args.includes("--kubernetes") || args[0] !== "ca") continue;
    const audience = argValue(args, "--token-audience") ?? "weft-ca";
    if (source.audience !== audience) {
      problem(where, `container ${container.name}: the CA token's audience is ${source.audience ?? "the API server's"}, but Deployment ${ca.metadata?.name} checks --token-audience ${audience}`);
    }
  }
}

// A gateway that asks the CA with its token (--ca-token-file) gets a certificate only when the CA lists its pods'
// service account in --gateway-account: otherwise every request is refused (not_a_node_account) in the cluster.
function gatewayAccountRules(where, deployment, container, objects) {
  const args = container.args ?? [];
  if (args[0] !== "gateway" || argValue(args, "--ca-token-file") === undefined) return;
  const account = `${deployment.metadata?.namespace}/${deployment.spec?.template?.spec?.serviceAccountName ?? "default"}`;
  for (const ca of objects.filter((o) => o.kind === "Deployment")) {
    const caArgs = ca.spec?.template?.spec?.containers?.flatMap((c) => c.args ?? []) ?? [];
    if (!caArgs.includes("--kubernetes") || caArgs[0] !== "ca") continue;
    const listed = caArgs.flatMap((a, i) => (a === "--gateway-account" ? [caArgs[i + 1]] : a.startsWith("--gateway-account=") ? [a.slice(18)] : []));
    if (!listed.includes(account)) {
      problem(where, `container ${container.name}: its service account ${account} is not a --gateway-account of Deployment ${ca.metadata?.name}: the CA would refuse it`);
    }
  }
}

function contractRules(setName, entries) {
  const objects = entries.map((e) => e.object);
  const namespaces = new Set(objects.filter((o) => o.kind === "Namespace").map((o) => o.metadata?.name));
  const clusterScoped = new Set(["Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "IngressClass", "GatewayClass"]);
  const seen = new Set();
  for (const { file, object } of entries) {
    const where = `${rel(file)}: ${describe(object)}`;
    const id = `${object.apiVersion}/${object.kind}/${object.metadata?.namespace ?? ""}/${object.metadata?.name}`;
    if (seen.has(id)) problem(where, `defined twice in ${setName}`);
    seen.add(id);
    if (!clusterScoped.has(object.kind)) {
      const ns = object.metadata?.namespace;
      if (!ns) problem(where, "namespaced object without metadata.namespace");
      else if (namespaces.size > 0 && !namespaces.has(ns)) problem(where, `namespace ${ns} is not created by ${setName}`);
    }
    if (object.kind === "ClusterRole") {
      for (const rule of object.rules ?? []) {
        const resources = rule.resources ?? [];
        const onStatus = resources.length > 0 && resources.every((r) => /^[a-z]+\/status$/.test(r));
        // A review (TokenReview) is answered and never stored: creating one writes nothing.
        const reviewsOnly = (rule.apiGroups ?? []).every((g) => g === "authentication.k8s.io") && resources.every((r) => r === "tokenreviews");
        for (const verb of rule.verbs ?? []) {
          if (onStatus ? !statusVerbs.has(verb) : !readVerbs.has(verb) && !(verb === "create" && reviewsOnly)) {
            problem(where, `verb '${verb}' on ${resources.join(",")}: nothing writable cluster-wide${onStatus ? " but status, by patch" : ""}`);
          }
        }
        for (const r of resources) {
          if (r === "*" || (r.includes("/") && !/^[a-z]+\/status$/.test(r))) problem(where, `resource '${r}': name plain resources (or their status) only`);
        }
        if (!onStatus && resources.some((r) => r.includes("/"))) problem(where, `a rule mixes status subresources with other resources: ${resources.join(",")}`);
      }
    }
    if (object.kind === "ClusterRoleBinding" || object.kind === "RoleBinding") {
      if (!objects.some((o) => o.kind === object.roleRef?.kind && o.metadata?.name === object.roleRef?.name)) {
        problem(where, `roleRef ${object.roleRef?.kind}/${object.roleRef?.name} is not in the set`);
      }
      for (const s of object.subjects ?? []) {
        if (s.kind === "ServiceAccount" && !objects.some((o) => o.kind === "ServiceAccount" && o.metadata?.name === s.name && o.metadata?.namespace === s.namespace)) {
          problem(where, `subject ServiceAccount ${s.namespace}/${s.name} is not in the set`);
        }
      }
    }
    if (object.kind === "DaemonSet") {
      // No private key of the CA on a node: the DaemonSet mounts no Secret and names no CA key (issue 11).
      const podSpec = object.spec?.template?.spec ?? {};
      for (const v of podSpec.volumes ?? []) {
        const secrets = [v.secret?.secretName, ...(v.projected?.sources ?? []).map((s) => s.secret?.name)].filter(Boolean);
        for (const name of secrets) problem(where, `volume ${v.name} mounts Secret ${name}: the DaemonSet must mount no private key (only the trust bundle and the CA token)`);
      }
      for (const c of [...(podSpec.containers ?? []), ...(podSpec.initContainers ?? [])]) {
        if ((c.args ?? []).includes("--ca-key") || (c.command ?? []).includes("--ca-key")) problem(where, `container ${c.name} is given --ca-key: nodes must not hold the CA key`);
        caTokenRules(where, c, podSpec, objects);
      }
    }
    if (object.kind === "DaemonSet" || object.kind === "Deployment") {
      const labels = object.spec?.template?.metadata?.labels ?? {};
      for (const [k, v] of Object.entries(object.spec?.selector?.matchLabels ?? {})) {
        if (labels[k] !== v) problem(where, `selector ${k}=${v} does not match the pod template's labels`);
      }
      podSpecRules(where, object.spec?.template?.spec ?? {}, objects);
    }
    if (object.kind === "Deployment") {
      const podSpec = object.spec?.template?.spec ?? {};
      for (const c of podSpec.containers ?? []) {
        if ((c.args ?? [])[0] !== "gateway") continue;
        caTokenRules(where, c, podSpec, objects);
        gatewayAccountRules(where, object, c, objects);
      }
    }
  }
}

// ---- run ------------------------------------------------------------------------------------------------

let checked = 0;
const everything = [...sets.values()].flat();
for (const entry of everything) {
  if (entry.object.kind === "CustomResourceDefinition") registerCrd(entry);
}
for (const entry of [...everything, ...samples]) {
  const { file, object } = entry;
  if (typeof object.apiVersion !== "string" || typeof object.kind !== "string") {
    problem(rel(file), "an object without apiVersion or kind");
    continue;
  }
  const known = (await checkBuiltIn(entry)) || (await checkCustom(entry));
  if (!known) problem(`${rel(file)}: ${describe(object)}`, `no schema for ${object.apiVersion} ${object.kind} (neither built in nor a CRD in the set)`);
  checked++;
}
for (const [dir, entries] of sets) contractRules(`kustomization ${rel(dir)}`, entries);

if (problems.length > 0) {
  for (const p of problems) console.error(p);
  console.error(`${problems.length} problem(s) in ${root}`);
  process.exit(1);
}
const counts = [...sets].map(([dir, entries]) => `${rel(dir)}: ${entries.length}`).join(", ");
console.log(`valid: ${checked} objects (${counts}; examples: ${samples.length}) against the Kubernetes OpenAPI schemas and the CRDs' own`);
