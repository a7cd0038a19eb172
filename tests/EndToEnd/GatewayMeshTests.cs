using System.Diagnostics;
using System.Text;
using Weft.Harness;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// <c>weft gateway</c> as a member of the mesh: it runs in a pod of its own namespace (not enrolled) on node1, gets its
/// certificate from the CA service with node1's credential, and routes by host to HTTP backends on node2: three meshed
/// pods in a STRICT namespace, one pod in an unenrolled namespace.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class GatewayMeshTests
{
    private const string GatewayPrincipal = "spiffe://cluster.local/ns/weft-gateway/sa/weft-gateway";

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("weft-gateway", "gw1") { ServiceAccount = "weft-gateway" }),
        new NodeSpec("node2", new PodSpec("demo", "web1"), new PodSpec("demo", "guarded1"), new PodSpec("demo", "other1"), new PodSpec("plain", "legacy1")));

    /// <summary>What the agents and the CA read: the pods, the Services, STRICT for demo and a DENY of the gateway for app guarded.</summary>
    private static string Inventory(NetnsCluster c) => c.InventoryYaml(new InventoryOptions
    {
        UnenrolledNamespaces = ["weft-gateway", "plain"],
        Services =
        [
            new ServiceSpec("web", "demo", "10.96.0.10", 80, 8080, c.Pod("demo", "web1")),
            new ServiceSpec("guarded", "demo", "10.96.0.11", 80, 8080, c.Pod("demo", "guarded1")),
            new ServiceSpec("other", "demo", "10.96.0.12", 80, 8080, c.Pod("demo", "other1")),
            new ServiceSpec("legacy", "plain", "10.96.0.13", 80, 8080, c.Pod("plain", "legacy1")),
        ],
    }) + """
        ---
        apiVersion: weft.dev/v1alpha1
        kind: PeerAuthentication
        metadata: {name: strict, namespace: demo}
        spec: {mtls: {mode: STRICT}}
        ---
        apiVersion: weft.dev/v1alpha1
        kind: AuthorizationPolicy
        metadata: {name: no-gateway, namespace: demo}
        spec:
          selector: {matchLabels: {app: guarded}}
          action: DENY
          rules:
          - from: [{source: {principals: ["cluster.local/ns/weft-gateway/sa/weft-gateway"]}}]
        """;

    /// <summary>The gateway's file: the same objects plus one Ingress rule per backend host.</summary>
    private static string GatewayInventory(NetnsCluster c) => Inventory(c) + "\n" + string.Concat(
        new[] { ("web", "demo"), ("guarded", "demo"), ("other", "demo"), ("legacy", "plain") }.Select(b => $$"""
        ---
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata: {name: {{b.Item1}}, namespace: {{b.Item2}}}
        spec:
          ingressClassName: weft
          rules:
          - host: {{b.Item1}}.example
            http:
              paths:
              - {pathType: Prefix, path: /, backend: {service: {name: {{b.Item1}}, port: {number: 80} } } }

        """));

    [PrivilegedFact]
    public async Task Gateway_ReachesMeshedBackendsOnlyOverHbone_AsItsOwnPrincipal_DenyGets403_UnmeshedStaysPlaintext_TunnelsBounded()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory, MeshIdentity.CaService);
        var cluster = mesh.Cluster;
        var files = Directory.CreateTempSubdirectory("weft-gateway-mesh-").FullName;
        cluster.OwnDirectory(files);
        var meshed = string.Concat(Enumerable.Range(0, 800).Select(i => $"meshed-payload-line-{i:D5}\n"));
        var plain = string.Concat(Enumerable.Range(0, 800).Select(i => $"plain-payload-line-{i:D5}\n"));
        File.WriteAllText(Path.Combine(files, "meshed.txt"), meshed);
        File.WriteAllText(Path.Combine(files, "plain.txt"), plain);
        var backends = new Dictionary<string, ManagedProcess>();
        foreach (var (ns, name) in new[] { ("demo", "web1"), ("demo", "guarded1"), ("demo", "other1"), ("plain", "legacy1") })
        {
            // HTTP/1.1: the gateway keeps its connection (and so its tunnel stream) to web1 open between requests.
            backends[name] = cluster.Pod(ns, name).StartProcess("/usr/bin/python3", "-u", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--protocol", "HTTP/1.1", "--directory", files);
        }

        foreach (var backend in backends.Values)
        {
            await backend.WaitForStdoutLineAsync(l => l.Contains("Serving HTTP", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
        }

        var gatewayFile = Path.Combine(files, "gateway.yaml");
        File.WriteAllText(gatewayFile, GatewayInventory(cluster));
        var gw = cluster.Pod("weft-gateway", "gw1");
        var credential = await mesh.IssueNodeCertificateAsync(gw.Node);
        var gateway = gw.StartWeft(["gateway", "--inventory", gatewayFile, "--http", $"{gw.Address}:8080", "--https", "off",
            "--admin", $"{gw.Address}:15080", "--mesh-namespace", "weft-gateway", "--mesh-service-account", "weft-gateway",
            "--max-tunnels", "1", .. mesh.CaClientArgs(credential)]);
        await MeshCluster.WaitForStderrAsync(gateway, l => l.Contains("gateway: ready", StringComparison.Ordinal), TimeSpan.FromSeconds(60));
        Assert.Contains(gateway.StderrLines, l => l.Contains($"mesh identity {GatewayPrincipal}", StringComparison.Ordinal));

        var pcap = Path.Combine(files, "underlay.pcap");
        var capture = await UnderlayCapture.StartAsync(cluster.UnderlayNetnsName, pcap);
        (string Code, string Body) denied, web, legacy, other;
        try
        {
            // The DENY policy names the gateway's principal: guarded1's agent refuses the CONNECT, the client gets 403.
            denied = await CurlAsync(gw, "guarded.example", "/meshed.txt");

            // STRICT web1 accepts the gateway's mTLS; the tunnel of the refused CONNECT, idle, makes room (--max-tunnels 1).
            web = await CurlAsync(gw, "web.example", "/meshed.txt");

            // web1's tunnel still carries the gateway's kept-alive connection: a tunnel to a third pod is past the limit.
            other = await CurlAsync(gw, "other.example", "/meshed.txt");

            // The unmeshed backend is reached as before, in plaintext. Last: seeing it proves the capture covered the rest.
            legacy = await CurlAsync(gw, "legacy.example", "/plain.txt");
            await Task.Delay(1000);
        }
        finally
        {
            await capture.StopAsync();
        }

        Assert.Equal("403", denied.Code);
        Assert.Equal("200", web.Code);
        Assert.Equal(meshed, web.Body);
        Assert.Equal("200", legacy.Code);
        Assert.Equal(plain, legacy.Body);
        Assert.Equal("503", other.Code);
        Assert.Equal(0, Requests(backends["guarded1"]));
        Assert.Equal(0, Requests(backends["other1"]));
        Assert.Equal(1, Requests(backends["web1"]));
        Assert.Equal(1, Requests(backends["legacy1"]));

        var raw = File.ReadAllBytes(pcap);
        var web1 = cluster.Pod("demo", "web1").Address;
        var legacy1 = cluster.Pod("plain", "legacy1").Address;

        // The plaintext backend's bytes are on the wire as they are (the capture works); the meshed one's never are.
        // Lines are counted one by one: a TCP segment boundary may split any single line.
        int LinesOnWire(string prefix) => Enumerable.Range(0, 800).Count(i => raw.AsSpan().IndexOf(Encoding.ASCII.GetBytes($"{prefix}-payload-line-{i:D5}")) >= 0);
        Assert.True(LinesOnWire("plain") > 0, "the plaintext response is not in the capture: did it see the traffic?");
        Assert.Equal(0, LinesOnWire("meshed"));
        Assert.True(raw.AsSpan().IndexOf("meshed-payload-line-"u8) < 0, "the meshed backend's response crossed the underlay in clear text");
        Assert.True(raw.AsSpan().IndexOf("GET /meshed.txt"u8) < 0, "a request to a meshed backend crossed the underlay in clear text");
        var toWebElsewhere = Run("tcpdump", "-nn", "-r", pcap, $"tcp and host {web1} and not port 15008");
        Assert.True(toWebElsewhere.Trim().Length == 0, $"traffic to web1 other than to its port 15008:\n{toWebElsewhere}");
        Assert.Contains($"{web1}.15008:", Run("tcpdump", "-nn", "-r", pcap, "-c", "5", $"tcp and src host {gw.Address} and dst host {web1}"));
        Assert.Contains($"{legacy1}.8080:", Run("tcpdump", "-nn", "-r", pcap, "-c", "5", $"tcp and src host {gw.Address} and dst host {legacy1}"));

        // The gateway counts what it did: a 403 DENY, a 503 UO, one tunnel evicted at the limit and one refused.
        var metrics = (await CurlAsync(gw, null, "/metrics", $"{gw.Address}:15080")).Body;
        Assert.Contains("response_code=\"403\",response_flags=\"DENY\"", metrics);
        Assert.Contains("response_code=\"503\",response_flags=\"UO\"", metrics);
        Assert.Contains("weft_gateway_tunnels_evicted_total 1", metrics);
        Assert.Contains("weft_gateway_tunnels_refused_total 1", metrics);
        Assert.Contains("weft_gateway_tunnels 1", metrics);

        // The backends' agent knows the gateway by its own principal, for the allowed stream and the denied one.
        // A flow is logged when its connection ends: the gateway, stopped, closes its kept-alive one to web1.
        gateway.Stop();
        Assert.Equal(0, await gateway.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        var node2 = mesh.Agent("node2");
        var inbound = await PodTrafficTests.WaitForFlowAsync(node2, f => f.GetProperty("direction").GetString() == "inbound"
            && f.TryGetProperty("destination_workload", out var w) && w.GetString() == "demo/web1");
        Assert.Equal(GatewayPrincipal, inbound.GetProperty("source_principal").GetString());
        Assert.Equal("mutual_tls", inbound.GetProperty("connection_security_policy").GetString());
        var refused = await PodTrafficTests.WaitForFlowAsync(node2, f => f.GetProperty("response_flags").GetString() == "DENY");
        Assert.Equal(GatewayPrincipal, refused.GetProperty("source_principal").GetString());
        Assert.Contains("demo/no-gateway", refused.GetProperty("error").GetString());
    }

    internal static int Requests(ManagedProcess backend) => backend.StderrLines.Count(l => l.Contains("\"GET ", StringComparison.Ordinal));

    /// <summary>curl from the gateway pod's node: the status code and the body.</summary>
    internal static async Task<(string Code, string Body)> CurlAsync(ClusterPod gateway, string? host, string path, string? address = null)
    {
        var body = Path.Combine(Path.GetTempPath(), $"weft-gateway-curl-{Guid.NewGuid():N}");
        try
        {
            string[] hostHeader = host is null ? [] : ["-H", $"Host: {host}"];
            await using var curl = gateway.Node.StartProcess("curl", ["-s", "-o", body, "-w", "%{http_code}", "--max-time", "30", .. hostHeader,
                $"http://{address ?? $"{gateway.Address}:8080"}{path}"], null);
            await curl.WaitForExitAsync(TimeSpan.FromSeconds(45));
            return (curl.Stdout.Trim(), File.Exists(body) ? File.ReadAllText(body) : "");
        }
        finally
        {
            File.Delete(body);
        }
    }

    private static string Run(string file, params string[] args)
    {
        using var process = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return output;
    }
}
