using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Reflection;
using Weft.Capture;
using Weft.Gateway;
using Weft.Harness;
using Weft.Inventory;
using Weft.Tests.Inventory.Kubernetes;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// <c>weft gateway</c> in Kubernetes mode as a member of the mesh, deployed as a user deploys it: no --inventory, its
/// routes and which backends are meshed from the API server (the wire-level fake, listening in node1's netns), its
/// certificate from <c>weft ca serve --kubernetes --gateway-account</c> with its pod's projected token (TokenReview
/// by the fake). Backends on node2: two meshed pods in a STRICT namespace (one behind a DENY of the gateway's
/// principal) and one unmeshed pod; the agents read the same objects from their file.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class GatewayKubernetesMeshTests
{
    private const string GatewayPrincipal = "spiffe://cluster.local/ns/weft-gateway/sa/weft-gateway";
    private const int ApiPort = 16443;
    private const int CaPort = 15022;
    private static readonly MethodInfo ApplyMethod = typeof(FakeApiServer).GetMethods().Single(m => m.Name == nameof(FakeApiServer.Apply) && m.IsGenericMethodDefinition);

    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("weft-gateway", "gw1") { ServiceAccount = "weft-gateway" }),
        new NodeSpec("node2", new PodSpec("demo", "web1"), new PodSpec("demo", "guarded1"), new PodSpec("plain", "legacy1")));

    private static string Inventory(NetnsCluster c) => c.InventoryYaml(new InventoryOptions
    {
        UnenrolledNamespaces = ["weft-gateway", "plain"],
        Services =
        [
            new ServiceSpec("web", "demo", "10.96.0.10", 80, 8080, c.Pod("demo", "web1")),
            new ServiceSpec("guarded", "demo", "10.96.0.11", 80, 8080, c.Pod("demo", "guarded1")),
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

    private static string Ingresses() => string.Concat(new[] { ("web", "demo"), ("guarded", "demo"), ("legacy", "plain") }.Select(b => $$"""
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
    public async Task GatewayInKubernetesMode_GetsItsIdentityWithItsPodsToken_ReachesMeshedPodsOnlyOverHbone_DenyGets403_UnmeshedPlaintext()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory, MeshIdentity.LocalCa);
        var cluster = mesh.Cluster;
        var node1 = cluster.Node("node1");
        var files = Directory.CreateTempSubdirectory("weft-gateway-kube-mesh-").FullName;
        cluster.OwnDirectory(files);

        // The API server of the cluster, reachable from node1's pods and processes (not from the machine's netns).
        var api = FakeApiServer.Start(port => NetNamespace.Run(node1.NetnsPath, () =>
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            socket.Bind(new IPEndPoint(node1.Address, port == 0 ? ApiPort : port));
            socket.Listen(64);
            return socket;
        }));
        try
        {
            foreach (var obj in InventoryYaml.Load(Inventory(cluster) + "\n" + Ingresses(), "cluster.yaml", GatewayApiKinds.All))
            {
                ApplyMethod.MakeGenericMethod(obj.GetType()).Invoke(api, [obj]);
            }

            var kubeconfig = Path.Combine(files, "kubeconfig");
            File.WriteAllText(kubeconfig, $$$"""
                apiVersion: v1
                kind: Config
                clusters: [{name: fake, cluster: {server: "http://{{{node1.Address}}}:{{{api.Port}}}"}}]
                users: [{name: fake, user: {token: test}}]
                contexts: [{name: fake, context: {cluster: fake, user: fake}}]
                current-context: fake
                """);

            // The gateway pod's projected token for the CA (audience weft-ca), as kubelet would mount it.
            var tokenFile = Path.Combine(files, "ca-token");
            File.WriteAllText(tokenFile, api.ServiceAccountToken("weft-gateway", "weft-gateway", pod: "gw1", audiences: ["weft-ca"]));

            var ca = node1.StartWeft(["ca", "serve", "--ca-cert", mesh.Ca!.CertificatePath, "--ca-key", mesh.Ca.KeyPath, "--trust-bundle", mesh.Ca.TrustBundlePath,
                "--trust-domain", MeshCluster.TrustDomain, "--kubeconfig", kubeconfig, "--gateway-account", "weft-gateway/weft-gateway",
                "--listen", $"{node1.Address}:{CaPort}", "--metrics", "off"]);
            await MeshCluster.WaitForStderrAsync(ca, l => l.Contains("ca: ready", StringComparison.Ordinal), TimeSpan.FromSeconds(60));

            var backends = await StartBackendsAsync(cluster, files);
            var gw = cluster.Pod("weft-gateway", "gw1");
            var gateway = gw.StartWeft(["gateway", "--kubeconfig", kubeconfig, "--http", $"{gw.Address}:8080", "--https", "off",
                "--admin", $"{gw.Address}:15080", "--trust-domain", MeshCluster.TrustDomain, "--mesh-namespace", "weft-gateway",
                "--ca-address", $"https://{node1.Address}:{CaPort}", "--ca-token-file", tokenFile, "--trust-bundle", mesh.Ca.TrustBundlePath]);
            await MeshCluster.WaitForStderrAsync(gateway, l => l.Contains("gateway: ready", StringComparison.Ordinal), TimeSpan.FromSeconds(60));
            Assert.Contains(gateway.StderrLines, l => l.Contains($"mesh identity {GatewayPrincipal}", StringComparison.Ordinal));
            Assert.Single(ca.StderrLines, l => l.Contains($"issued {GatewayPrincipal} to node node1", StringComparison.Ordinal));

            // Routes come from the watches: wait until the gateway serves them.
            await WaitForRouteAsync(gw, "legacy.example");

            var pcap = Path.Combine(files, "underlay.pcap");
            var capture = await UnderlayCapture.StartAsync(cluster.UnderlayNetnsName, pcap);
            (string Code, string Body) denied, web, legacy;
            try
            {
                denied = await GatewayMeshTests.CurlAsync(gw, "guarded.example", "/meshed.txt");
                web = await GatewayMeshTests.CurlAsync(gw, "web.example", "/meshed.txt");
                legacy = await GatewayMeshTests.CurlAsync(gw, "legacy.example", "/plain.txt");
                await Task.Delay(1000);
            }
            finally
            {
                await capture.StopAsync();
            }

            Assert.Equal("403", denied.Code);
            Assert.Equal("200", web.Code);
            Assert.Equal(Meshed, web.Body);
            Assert.Equal("200", legacy.Code);
            Assert.Equal(Plain, legacy.Body);
            Assert.Equal(0, GatewayMeshTests.Requests(backends["guarded1"]));
            Assert.Equal(1, GatewayMeshTests.Requests(backends["web1"]));

            var raw = File.ReadAllBytes(pcap);
            var web1 = cluster.Pod("demo", "web1").Address;
            var legacy1 = cluster.Pod("plain", "legacy1").Address;
            Assert.True(raw.AsSpan().IndexOf("plain-payload-line-"u8) >= 0, "the plaintext response is not in the capture: did it see the traffic?");
            Assert.True(raw.AsSpan().IndexOf("meshed-payload-line-"u8) < 0, "the meshed backend's response crossed the underlay in clear text");
            Assert.True(raw.AsSpan().IndexOf("GET /meshed.txt"u8) < 0, "a request to a meshed backend crossed the underlay in clear text");
            var toWebElsewhere = Run("tcpdump", "-nn", "-r", pcap, $"tcp and host {web1} and not port 15008");
            Assert.True(toWebElsewhere.Trim().Length == 0, $"traffic to web1 other than to its port 15008:\n{toWebElsewhere}");
            Assert.Contains($"{web1}.15008:", Run("tcpdump", "-nn", "-r", pcap, "-c", "5", $"tcp and src host {gw.Address} and dst host {web1}"));
            Assert.Contains($"{legacy1}.8080:", Run("tcpdump", "-nn", "-r", pcap, "-c", "5", $"tcp and src host {gw.Address} and dst host {legacy1}"));

            var metrics = (await GatewayMeshTests.CurlAsync(gw, null, "/metrics", $"{gw.Address}:15080")).Body;
            Assert.Contains("response_code=\"403\",response_flags=\"DENY\"", metrics);

            // The backends' agent knows the gateway by its own principal.
            gateway.Stop();
            Assert.Equal(0, await gateway.WaitForExitAsync(TimeSpan.FromSeconds(60)));
            var inbound = await PodTrafficTests.WaitForFlowAsync(mesh.Agent("node2"), f => f.GetProperty("direction").GetString() == "inbound"
                && f.TryGetProperty("destination_workload", out var w) && w.GetString() == "demo/web1");
            Assert.Equal(GatewayPrincipal, inbound.GetProperty("source_principal").GetString());
            Assert.Equal("mutual_tls", inbound.GetProperty("connection_security_policy").GetString());
        }
        finally
        {
            await api.DisposeAsync();

            // The thread that made the API server's socket holds node1's netns: let it go before the cluster is removed.
            NetNamespace.Release(node1.NetnsPath);
        }
    }

    private static readonly string Meshed = string.Concat(Enumerable.Range(0, 800).Select(i => $"meshed-payload-line-{i:D5}\n"));
    private static readonly string Plain = string.Concat(Enumerable.Range(0, 800).Select(i => $"plain-payload-line-{i:D5}\n"));

    private static async Task<Dictionary<string, ManagedProcess>> StartBackendsAsync(NetnsCluster cluster, string files)
    {
        File.WriteAllText(Path.Combine(files, "meshed.txt"), Meshed);
        File.WriteAllText(Path.Combine(files, "plain.txt"), Plain);
        var backends = new Dictionary<string, ManagedProcess>();
        foreach (var (ns, name) in new[] { ("demo", "web1"), ("demo", "guarded1"), ("plain", "legacy1") })
        {
            backends[name] = cluster.Pod(ns, name).StartProcess("/usr/bin/python3", "-u", "-m", "http.server", "8080", "--bind", "0.0.0.0", "--protocol", "HTTP/1.1", "--directory", files);
        }

        foreach (var backend in backends.Values)
        {
            await backend.WaitForStdoutLineAsync(l => l.Contains("Serving HTTP", StringComparison.Ordinal), TimeSpan.FromSeconds(30));
        }

        return backends;
    }

    private static async Task WaitForRouteAsync(ClusterPod gw, string host)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            var routes = (await GatewayMeshTests.CurlAsync(gw, null, "/routes", $"{gw.Address}:15080")).Body;
            if (routes.Contains(host, StringComparison.Ordinal))
            {
                return;
            }

            Assert.True(DateTime.UtcNow < deadline, $"the gateway never served {host}; /routes:\n{routes}");
            await Task.Delay(200);
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
