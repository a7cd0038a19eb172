using System.Text;
using k8s;
using k8s.Models;
using Weft.Gateway;
using Weft.Inventory;
using Weft.Policy;

namespace Weft.Tests.Inventory;

/// <summary>
/// The file inventory's YAML, read as typed JSON (<see cref="TypedYamlJson"/>) instead of KubernetesYaml: scalars take
/// the type of the field they land in, as KubernetesYaml gives them, and a value that does not fit is reported at its
/// line and column. Where KubernetesYaml can read a file too (it runs here, under the JIT), both must read the same objects.
/// </summary>
public sealed class InventoryYamlTypingTests
{
    private static T One<T>(string yaml, IDictionary<string, Type>? extraKinds = null) =>
        Assert.IsType<T>(Assert.Single(InventoryYaml.Load(yaml, "test.yaml", extraKinds)));

    private static InventoryLoadException Failure(string yaml) =>
        Assert.Throws<InventoryLoadException>(() => InventoryYaml.Load(yaml, "test.yaml"));

    /// <summary>Both readers give the same objects: compared as KubernetesClient's JSON of each.</summary>
    private static void SameAsKubernetesYaml(string yaml, IDictionary<string, Type>? extraKinds = null)
    {
        var kinds = new Dictionary<string, Type>(PolicyKinds.All);
        foreach (var (key, type) in extraKinds ?? new Dictionary<string, Type>())
        {
            kinds[key] = type;
        }

        var expected = KubernetesYaml.LoadAllFromString(yaml, kinds).Select(o => KubernetesJson.Serialize(o)).ToList();
        var actual = InventoryYaml.Load(yaml, "test.yaml", extraKinds).Select(o => KubernetesJson.Serialize(o)).ToList();
        Assert.Equal(expected, actual);
    }

    [Fact]
    public void ANumberOrBooleanIntoAStringField_IsItsText()
    {
        var pod = One<V1Pod>("""
            apiVersion: v1
            kind: Pod
            metadata:
              name: 7
              labels: {version: 1, release: 1.10, canary: true, build: 0x1F}
              annotations: {weft.dev/fail-open: yes}
            spec: {nodeName: 12}
            """);

        Assert.Equal("7", pod.Metadata.Name);
        Assert.Equal(new Dictionary<string, string> { ["version"] = "1", ["release"] = "1.10", ["canary"] = "true", ["build"] = "0x1F" }, pod.Metadata.Labels);
        Assert.Equal("yes", pod.Metadata.Annotations["weft.dev/fail-open"]);
        Assert.Equal("12", pod.Spec.NodeName);
    }

    [Fact]
    public void AQuotedNumberIntoAnIntField_IsTheNumber()
    {
        var service = One<V1Service>("""
            apiVersion: v1
            kind: Service
            metadata: {name: b}
            spec:
              ports:
              - {port: "8080", nodePort: '30080'}
            """);

        Assert.Equal(8080, service.Spec.Ports[0].Port);
        Assert.Equal(30080, service.Spec.Ports[0].NodePort);
    }

    [Fact]
    public void IntOrString_TakesANumberOrAName()
    {
        var service = One<V1Service>("""
            apiVersion: v1
            kind: Service
            metadata: {name: b}
            spec:
              ports:
              - {name: a, port: 80, targetPort: 8080}
              - {name: b, port: 81, targetPort: http}
              - {name: c, port: 82, targetPort: "9090"}
            """);

        Assert.Equal(["8080", "http", "9090"], service.Spec.Ports.Select(p => p.TargetPort.Value));
    }

    [Fact]
    public void BooleansFollowKubernetesYaml_Yaml11WordsIncluded()
    {
        var slice = One<V1EndpointSlice>("""
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: s}
            addressType: IPv4
            endpoints:
            - {addresses: [10.0.0.1], conditions: {ready: true, serving: "false", terminating: no}}
            - {addresses: [10.0.0.2], conditions: {ready: yes, serving: On, terminating: ~}}
            - {addresses: [10.0.0.3], conditions: {ready: null, serving: , terminating: NULL}}
            """);

        Assert.Equal([true, true, null], slice.Endpoints.Select(e => e.Conditions.Ready));
        Assert.Equal([false, true, null], slice.Endpoints.Select(e => e.Conditions.Serving));
        Assert.Equal([false, null, null], slice.Endpoints.Select(e => e.Conditions.Terminating));
    }

    [Fact]
    public void AWordForAnIntField_IsReportedAtTheWord()
    {
        var failure = Failure("""
            apiVersion: v1
            kind: Service
            metadata: {name: b}
            spec:
              ports: [{port: 80}, {port: eighty}]
            """);

        Assert.Equal("test.yaml:5:30: in the Service starting at line 1: a value of the wrong type: The input string 'eighty' was not in a correct format.", failure.Message);
    }

    [Fact]
    public void AMappingOrListWhereAValueBelongs_AndAValueWhereAListBelongs_AreReportedWhereTheyStart()
    {
        Assert.Equal("test.yaml:3:33: in the Pod starting at line 1: a value of the wrong type: expected a string, found a list",
            Failure("apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: {x: [1, 2]}}\n").Message);
        Assert.Equal("test.yaml:4:10: in the Service starting at line 1: a value of the wrong type: expected a list, found 'not-a-list'",
            Failure("apiVersion: v1\nkind: Service\nspec:\n  ports: not-a-list\n").Message);
        Assert.Equal("test.yaml:3:11: in the Pod starting at line 1: a value of the wrong type: expected a mapping, found 'a1'",
            Failure("apiVersion: v1\nkind: Pod\nmetadata: a1\n").Message);
        Assert.Equal("test.yaml:3:23: in the Service starting at line 1: a value of the wrong type: 99999999999 is out of range for Int32",
            Failure("apiVersion: v1\nkind: Service\nspec: {ports: [{port: 99999999999}]}\n").Message);
    }

    [Fact]
    public void AValueOnlyItsConverterRefuses_IsReportedAtTheValue()
    {
        var failure = Failure("""
            apiVersion: v1
            kind: Pod
            metadata:
              name: a
              creationTimestamp: "not a time"
            """);

        Assert.Equal((5, 22), (failure.Line, failure.Column));
        Assert.StartsWith("test.yaml:5:22: in the Pod starting at line 1: a value of the wrong type: ", failure.Message);
    }

    [Fact]
    public void SecretData_IsBase64_AndStringDataIsText()
    {
        const string yaml = """
            apiVersion: v1
            kind: Secret
            metadata: {name: s}
            type: kubernetes.io/tls
            data: {tls.crt: aGVsbG8=, empty: ""}
            stringData: {note: 1}
            """;
        var secret = One<V1Secret>(yaml);
        SameAsKubernetesYaml(yaml);

        Assert.Equal("hello", Encoding.UTF8.GetString(secret.Data["tls.crt"]));
        Assert.Equal("1", secret.StringData["note"]);
    }

    [Fact]
    public void QuantitiesAndTimestamps_AreRead()
    {
        var pod = One<V1Pod>("""
            apiVersion: v1
            kind: Pod
            metadata: {name: a, creationTimestamp: 2026-01-02T03:04:05Z}
            spec:
              containers:
              - name: app
                resources: {limits: {cpu: 500m, memory: 1Gi}, requests: {cpu: 2, memory: "100"}}
            """);

        Assert.Equal(new DateTime(2026, 1, 2, 3, 4, 5, DateTimeKind.Utc), pod.Metadata.CreationTimestamp);
        var resources = pod.Spec.Containers[0].Resources;
        Assert.Equal(["500m", "1Gi"], new[] { resources.Limits["cpu"].ToString(), resources.Limits["memory"].ToString() });
        Assert.Equal(["2", "100"], new[] { resources.Requests["cpu"].ToString(), resources.Requests["memory"].ToString() });
    }

    [Fact]
    public void AnchorsAliasesAndMergeKeys_Repeat_WhatTheyName()
    {
        var objects = InventoryYaml.Load("""
            apiVersion: v1
            kind: Pod
            metadata:
              name: a
              labels: &labels {app: web, tier: 1}
              annotations: *labels
            spec:
              containers:
              - &base {name: app, image: web:1}
              - <<: *base
                name: sidecar
            """, "test.yaml");

        var pod = Assert.IsType<V1Pod>(Assert.Single(objects));
        Assert.Equal(pod.Metadata.Labels, pod.Metadata.Annotations);
        Assert.Equal("1", pod.Metadata.Labels["tier"]);
        Assert.Equal([("app", "web:1"), ("sidecar", "web:1")], pod.Spec.Containers.Select(c => (c.Name, c.Image)));
    }

    [Fact]
    public void AliasesCannotBlowUp_NorNameTheNodeTheyAreIn()
    {
        // targetRef is an object: what it holds is read as it is, aliases repeated, ten times ten times ... nine deep.
        var bomb = new StringBuilder("apiVersion: weft.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec:\n  targetRef:\n    a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for (var i = 1; i < 9; i++)
        {
            bomb.Append($"    a{i}: &a{i} [{string.Join(", ", Enumerable.Repeat($"*a{i - 1}", 10))}]\n");
        }

        var failure = Failure(bomb.ToString());
        Assert.Contains($"more than {TypedYamlJson.MaxNodes} YAML nodes in one object", failure.Message);

        Assert.Equal("test.yaml:3:36: in the Pod starting at line 1: the alias *l is inside the node it names",
            Failure("apiVersion: v1\nkind: Pod\nmetadata: {name: a, labels: &l {x: *l}}\n").Message);
    }

    [Fact]
    public void WeftPolicies_TypeTheirPortsAsStrings()
    {
        var policy = One<V1Alpha1AuthorizationPolicy>("""
            apiVersion: weft.dev/v1alpha1
            kind: AuthorizationPolicy
            metadata: {name: p, namespace: demo}
            spec:
              action: ALLOW
              rules:
              - to: [{operation: {ports: [8080, "9090"]}}]
            """);
        Assert.Equal(["8080", "9090"], policy.Spec!.Rules![0].To![0].Operation!.Ports);

        SameAsKubernetesYaml("""
            apiVersion: weft.dev/v1alpha1
            kind: PeerAuthentication
            metadata: {name: default, namespace: weft-system}
            spec: {mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}, "9090": {mode: DISABLE}}}
            """);
    }

    [Fact]
    public void GatewayApiObjects_ReadAsKubernetesYamlReadThem_StatusLeftOut()
    {
        const string yaml = """
            apiVersion: gateway.networking.k8s.io/v1
            kind: Gateway
            metadata: {name: gw, namespace: infra}
            spec:
              gatewayClassName: weft
              listeners:
              - {name: http, port: "80", protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
            status: {addresses: [{value: 10.0.0.1}]}
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: r, namespace: demo}
            spec:
              parentRefs: [{name: gw, namespace: infra}]
              hostnames: [shop.example.com]
              rules:
              - matches: [{path: {type: PathPrefix, value: /api}}]
                backendRefs: [{name: api, port: 8080, weight: "3"}]
                timeouts: {request: 10s}
            """;

        SameAsKubernetesYaml(yaml, GatewayApiKinds.All);
        var gateway = Assert.IsType<GatewayResource>(InventoryYaml.Load(yaml, "test.yaml", GatewayApiKinds.All)[0]);
        Assert.Equal(80, gateway.Spec.Listeners![0].Port);
        Assert.Null(gateway.Status);
    }

    [Fact]
    public void TheContractsExamples_ReadAsKubernetesYamlReadsThem()
    {
        SameAsKubernetesYaml("""
            apiVersion: v1
            kind: Namespace
            metadata: {name: demo, labels: {weft.dev/mesh: enabled}}
            ---
            apiVersion: v1
            kind: Pod
            metadata:
              name: a1
              namespace: demo
              labels: {app: a, version: 2}
              annotations:
                weft.dev/netns: /var/run/netns/weft-ab12-n1-a1
                weft.dev/fail-open: "false"
            spec:
              nodeName: node1
              serviceAccountName: a
              containers: [{name: app, image: a, ports: [{containerPort: 8080, name: http}], env: [{name: N, value: 5}]}]
            status: {podIP: 10.244.1.2, podIPs: [{ip: 10.244.1.2}], phase: Running}
            ---
            apiVersion: v1
            kind: Service
            metadata: {name: b, namespace: demo}
            spec: {clusterIP: 10.96.0.10, clusterIPs: [10.96.0.10], ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]}
            ---
            apiVersion: discovery.k8s.io/v1
            kind: EndpointSlice
            metadata: {name: b-1, namespace: demo, labels: {kubernetes.io/service-name: b}}
            addressType: IPv4
            ports: [{name: http, port: 8080, protocol: TCP}]
            endpoints:
            - addresses: [10.244.2.2]
              conditions: {ready: true}
              nodeName: node2
              targetRef: {kind: Pod, name: b1, namespace: demo}
            ---
            apiVersion: apps/v1
            kind: Deployment
            metadata: {name: d, namespace: demo}
            spec: {replicas: 2, selector: {matchLabels: {app: a}}, template: {metadata: {labels: {app: a}}, spec: {containers: [{name: app, image: a}]}}}
            """);
    }

    [Fact]
    public void TheScaleTestsSyntheticCluster_ReadsAsKubernetesYamlReadsIt()
    {
        var writer = new StringWriter();
        new Weft.Scale.SyntheticCluster(40, nodes: 4, namespaces: 2).WriteYaml(writer);

        SameAsKubernetesYaml(writer.ToString());
    }

    [Fact]
    public void UnknownFieldsAreIgnored_AtAnyDepth()
    {
        var pod = One<V1Pod>("""
            apiVersion: v1
            kind: Pod
            metadata: {name: a, colour: blue, labels: {app: a}}
            spec: {nodeName: n, unknown: {deep: [1, {x: y}]}}
            extra: [1, 2]
            """);

        Assert.Equal("a", pod.Metadata.Labels["app"]);
        Assert.Equal("n", pod.Spec.NodeName);
    }

    [Fact]
    public void EveryKindKubernetesClientHasAModelFor_IsInTheTable()
    {
        var scanned = typeof(V1Pod).Assembly.GetTypes()
            .Select(t => (Type: t, Attribute: t.GetCustomAttributes(typeof(KubernetesEntityAttribute), false).Cast<KubernetesEntityAttribute>().FirstOrDefault()))
            .Where(t => t.Attribute is not null)
            .Select(t => (Key: string.IsNullOrEmpty(t.Attribute!.Group) ? $"{t.Attribute.ApiVersion}/{t.Attribute.Kind}" : $"{t.Attribute.Group}/{t.Attribute.ApiVersion}/{t.Attribute.Kind}", t.Type))
            .DistinctBy(t => t.Key)
            .OrderBy(t => t.Key, StringComparer.Ordinal)
            .ToList();

        // On a KubernetesClient upgrade, the table to paste into agent/Inventory/KubernetesKinds.cs is in the failure.
        var expected = string.Join("\n", scanned.Select(t => $"        [\"{t.Key}\"] = typeof({t.Type.Name}),"));
        var actual = string.Join("\n", KubernetesKinds.All.OrderBy(k => k.Key, StringComparer.Ordinal).Select(k => $"        [\"{k.Key}\"] = typeof({k.Value.Name}),"));
        Assert.Equal(expected, actual);
    }
}
