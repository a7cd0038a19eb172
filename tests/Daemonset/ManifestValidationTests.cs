namespace Weft.Tests.Daemonset;

/// <summary>
/// Every manifest under daemonset/ (the kustomize base, daemonset/uninstall and the example policies) validates
/// offline against the Kubernetes OpenAPI schemas and the CRDs' own schemas, and a manifest broken in any of the
/// ways a real `kubectl apply` would refuse is reported.
/// </summary>
public sealed class ManifestValidationTests
{
    [Fact]
    public async Task Manifests_AsShipped_ValidateAgainstKubernetesAndCrdSchemas()
    {
        var result = await ManifestValidator.ValidateAsync(ManifestValidator.DaemonsetDirectory);

        Assert.True(result.ExitCode == 0, result.Output);
        // The base (9 objects, the CA's 8, the gateway's 8 from daemonset/gateway) and the uninstall set (2) were
        // composed, and the example policies checked; daemonset/gateway is composed inside the base, not on its own.
        Assert.Contains(".: 25, uninstall: 2; examples: 5", result.StandardOutput);
    }

    public static TheoryData<string, string, string, string> BrokenManifests => new()
    {
        // file, text to replace (must be present), replacement, what the report must say
        { "daemonset.yaml", "hostNetwork: true", "hostNetwork: sure", "hostNetwork must be boolean" },
        { "daemonset.yaml", "hostPID: true", "hostPid: true", "hostPid: unknown field" },
        { "daemonset.yaml", "memory: 1Gi", "memory: 1 gigabyte", "memory must match format \"quantity\"" },
        { "daemonset.yaml", "  selector:\n    matchLabels:\n      app.kubernetes.io/name: weft\n      app.kubernetes.io/component: agent\n", "", "data/spec must have required property selector" },
        { "daemonset.yaml", "mountPropagation: HostToContainer", "mountPropagation: Bidirectional", "Bidirectional propagation is admitted only for privileged containers" },
        { "daemonset.yaml", "serviceAccountName: weft-agent", "serviceAccountName: weft-agnet", "serviceAccountName weft-agnet is not in the set" },
        { "daemonset.yaml", "key: trust-domain", "key: trustDomain", "ConfigMap weft-config has no key trustDomain" },
        { "daemonset.yaml", "kind: DaemonSet\n", "kind: DaemonSet\n  oops: [\n", "YAML:" },
        { "daemonset.yaml", "        configMap:\n          name: weft-ca-root-cert", "        secret:\n          secretName: weft-ca", "volume ca mounts Secret weft-ca: the DaemonSet must mount no private key" },
        { "daemonset.yaml", "        - --ca-token-file\n", "        - --ca-key\n", "container agent is given --ca-key: nodes must not hold the CA key" },
        { "daemonset.yaml", "              audience: weft-ca\n", "              audience: istio-ca\n", "the CA token's audience is istio-ca, but Deployment weft-ca checks --token-audience weft-ca" },
        { "daemonset.yaml", "        - /var/run/secrets/weft-ca/token\n", "        - /etc/weft/token\n", "--ca-token-file /etc/weft/token is not a projected serviceAccountToken in its volumes" },
        { "ca.yaml", "  resources: [tokenreviews]\n  verbs: [create]", "  resources: [pods]\n  verbs: [create]", "verb 'create' on pods: nothing writable cluster-wide" },
        { "ca.yaml", "replicas: 2", "replicas: two", "replicas must be integer" },
        { "rbac.yaml", "  resources: [endpointslices]\n  verbs: [get, list, watch]", "  resources: [endpointslices]\n  verbs: [get, list, watch, patch]", "verb 'patch' on endpointslices: nothing writable cluster-wide" },
        { "kustomization.yaml", "- configmap.yaml", "- config-map.yaml", "resource 'config-map.yaml' does not exist" },
        { "crds/peerauthentications.weft.dev.yaml", "                  mode:\n                    type: string\n", "                  mode:\n", "no type (not a structural schema)" },
        { "examples/policies.yaml", "mode: STRICT", "mode: Strict", "must be equal to one of the allowed values: UNSET, PERMISSIVE, STRICT, DISABLE" },
        { "examples/policies.yaml", "ports: [\"8080\"]", "ports: [8080]", "/spec/rules/0/to/0/operation/ports/0: must be string" },
        { "examples/policies.yaml", "principals: [", "principal: [", "unknown field principal" },
        { "uninstall/daemonset.yaml", "runAsNonRoot: true", "runAsNonRoot: 1", "runAsNonRoot must be boolean" },
        { "gateway/rbac.yaml", "httproutes/status]\n  verbs: [patch]", "httproutes/status]\n  verbs: [patch, delete]", "verb 'delete' on gatewayclasses/status,gateways/status,httproutes/status: nothing writable cluster-wide but status, by patch" },
        { "gateway/rbac.yaml", "referencegrants]\n  verbs: [get, list, watch]", "referencegrants]\n  verbs: [get, list, watch, update]", "verb 'update' on gatewayclasses,gateways,httproutes,referencegrants: nothing writable cluster-wide" },
        { "gateway/rbac.yaml", "resources: [ingresses/status]", "resources: [ingresses/status, ingresses]", "a rule mixes status subresources with other resources" },
        { "gateway/classes.yaml", "controllerName: weft.dev/gateway", "controller: weft.dev/gateway", "GatewayClass/weft: schema: data/spec must have required property controllerName" },
        { "gateway/deployment.yaml", "serviceAccountName: weft-gateway", "serviceAccountName: weft-gatewya", "serviceAccountName weft-gatewya is not in the set" },
        { "gateway/deployment.yaml", "runAsNonRoot: true", "runAsNonRoot: yes please", "runAsNonRoot must be boolean" },
        { "gateway/kustomization.yaml", "- classes.yaml", "- class.yaml", "resource 'class.yaml' does not exist" },
        { "gateway/deployment.yaml", "              audience: weft-ca\n", "              audience: istio-ca\n", "container gateway: the CA token's audience is istio-ca, but Deployment weft-ca checks --token-audience weft-ca" },
        { "gateway/deployment.yaml", "        - /var/run/secrets/weft-ca/token\n", "        - /etc/weft/token\n", "container gateway: --ca-token-file /etc/weft/token is not a projected serviceAccountToken in its volumes" },
        { "ca.yaml", "        - --gateway-account\n        - weft-system/weft-gateway\n", "", "container gateway: its service account weft-system/weft-gateway is not a --gateway-account of Deployment weft-ca: the CA would refuse it" },
    };

    [Theory]
    [MemberData(nameof(BrokenManifests))]
    public async Task Manifest_BrokenCopy_IsRejectedWithTheCause(string file, string original, string replacement, string expected)
    {
        var copy = Directory.CreateTempSubdirectory("weft-manifests-");
        try
        {
            CopyDirectory(ManifestValidator.DaemonsetDirectory, copy.FullName);
            var path = Path.Combine(copy.FullName, file);
            var text = await File.ReadAllTextAsync(path);
            var at = text.IndexOf(original, StringComparison.Ordinal);
            Assert.True(at >= 0, $"the shipped {file} no longer contains the text this case breaks: {original}");
            await File.WriteAllTextAsync(path, string.Concat(text.AsSpan(0, at), replacement, text.AsSpan(at + original.Length)));

            var result = await ManifestValidator.ValidateAsync(copy.FullName);

            Assert.True(result.ExitCode == 1, $"exit {result.ExitCode}, expected 1:\n{result.Output}");
            Assert.Contains(expected, result.StandardError);
        }
        finally
        {
            copy.Delete(recursive: true);
        }
    }

    private static void CopyDirectory(string from, string to)
    {
        foreach (var dir in Directory.EnumerateDirectories(from, "*", SearchOption.AllDirectories))
        {
            Directory.CreateDirectory(Path.Combine(to, Path.GetRelativePath(from, dir)));
        }

        foreach (var file in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
        {
            File.Copy(file, Path.Combine(to, Path.GetRelativePath(from, file)));
        }
    }
}
