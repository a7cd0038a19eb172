using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using k8s.Models;
using Weft.Cli;
using Weft.Tests.Ca;
using Weft.Tests.Inventory.Kubernetes;

namespace Weft.Tests.Cli;

/// <summary>
/// <c>weft check --cluster</c> against a wire-level fake API server: the DaemonSet's rollout from its status, and
/// the CA service from its Deployment, its ready pods and a TLS handshake through a port-forward that reaches a
/// real CA server on loopback.
/// </summary>
public sealed class ClusterCheckTests : IAsyncLifetime
{
    private const string CaAddress = "https://weft-ca.weft-system.svc:15012";

    private readonly string _directory = Directory.CreateTempSubdirectory("weft-cli-cluster-").FullName;
    private FakeApiServer _api = null!;
    private CaTestServer _ca = null!;
    private string _kubeconfig = null!;

    public async Task InitializeAsync()
    {
        _api = FakeApiServer.Start();
        _kubeconfig = _api.WriteKubeconfig(Path.Combine(_directory, "kubeconfig"));
        _ca = await CaTestServer.StartAsync([new("web-1", "demo", "web", "node1", "10.244.1.2")]);
        var caEndpoint = _ca.Server.Endpoint;
        _api.PortForwardTarget = (pod, port) => pod.StartsWith("weft-ca-", StringComparison.Ordinal) && port == 15012 ? caEndpoint : null;
    }

    public async Task DisposeAsync()
    {
        await _api.DisposeAsync();
        await _ca.DisposeAsync();
        Directory.Delete(_directory, recursive: true);
    }

    [Fact]
    public async Task RolledOutAgentsAndAReadyCa_AllPass_AndTheCaAnsweredTlsWithH2()
    {
        Install(desired: 3, updated: 3, ready: 3);
        InstallCa(replicas: 2, ready: 2);

        var (exit, checks, output) = await CheckAsync();

        Assert.True(exit == 0, output);
        Assert.Equal(["daemonset", "ca service"], checks.Keys);
        Assert.All(checks.Values, c => Assert.Equal("ok", c.Status));
        Assert.Equal("weft-system/weft-agent: 3/3 agents ready, all at the current revision", checks["daemonset"].Detail);
        Assert.True(checks["ca service"].Detail.StartsWith("weft-system/weft-ca: 2/2 ready; pod weft-ca-7f9c-a port 15012 answered TLS 1.3 with h2, certificate until ", StringComparison.Ordinal), checks["ca service"].Detail);
        Assert.Contains(_api.Requests, r => r.Path == "/api/v1/namespaces/weft-system/pods/weft-ca-7f9c-a/portforward" && r.Query["ports"] == "15012");
    }

    [Fact]
    public async Task RolloutInProgress_FailsNamingTheNodeWhoseAgentIsNotReady_AndTheFix()
    {
        Install(desired: 3, updated: 2, ready: 2, notReadyOn: "node3");
        InstallCa(replicas: 2, ready: 2);

        var (exit, checks, output) = await CheckAsync();

        Assert.True(exit == 1, output);
        Assert.Equal("fail", checks["daemonset"].Status);
        Assert.Equal("weft-system/weft-agent: 2/3 agents ready, 2/3 updated; not ready on node3", checks["daemonset"].Detail);
        Assert.Equal("kubectl -n weft-system rollout status daemonset/weft-agent; weft check --node node3", checks["daemonset"].Fix);
        Assert.Equal("ok", checks["ca service"].Status);
    }

    [Fact]
    public async Task NoDaemonSet_FailsWithTheInstallCommand()
    {
        var (exit, checks, output) = await CheckAsync();

        Assert.True(exit == 1, output);
        Assert.Equal("fail", checks["daemonset"].Status);
        Assert.Equal("kubectl apply -k daemonset/ (see README, Deploy)", checks["daemonset"].Fix);
        Assert.Equal("skip", checks["ca service"].Status);
    }

    [Fact]
    public async Task AgentsSigningTheirOwnCertificates_SkipTheCaCheck()
    {
        Install(desired: 1, updated: 1, ready: 1, caAddress: null);

        var (exit, checks, output) = await CheckAsync();

        Assert.True(exit == 0, output);
        Assert.Equal("skip", checks["ca service"].Status);
        Assert.Contains("no --ca-address in the DaemonSet", checks["ca service"].Detail);
    }

    [Fact]
    public async Task CaWithNoReadyReplica_Fails()
    {
        Install(desired: 1, updated: 1, ready: 1);
        InstallCa(replicas: 2, ready: 0);

        var (exit, checks, output) = await CheckAsync();

        Assert.True(exit == 1, output);
        Assert.Equal("fail", checks["ca service"].Status);
        Assert.StartsWith("weft-system/weft-ca: no ready replica of 2", checks["ca service"].Detail);
        Assert.Equal("kubectl -n weft-system describe deployment/weft-ca", checks["ca service"].Fix);
    }

    [Fact]
    public async Task CaPodNotListening_FailsWithWhatThePortForwardSaid()
    {
        Install(desired: 1, updated: 1, ready: 1);
        InstallCa(replicas: 1, ready: 1);
        _api.PortForwardTarget = (_, _) => null;

        var (exit, checks, output) = await CheckAsync();

        Assert.True(exit == 1, output);
        Assert.Equal("fail", checks["ca service"].Status);
        Assert.Contains("pod weft-ca-7f9c-a port 15012", checks["ca service"].Detail);
        Assert.Contains("15012", checks["ca service"].Detail[checks["ca service"].Detail.IndexOf(':', StringComparison.Ordinal)..]);
    }

    [Fact]
    public async Task CaPortAnsweringPlainTcp_FailsTheHandshake_InsteadOfHanging()
    {
        Install(desired: 1, updated: 1, ready: 1);
        InstallCa(replicas: 1, ready: 1);
        using var plain = new TcpListener(IPAddress.Loopback, 0);
        plain.Start();
        var plainEndpoint = (IPEndPoint)plain.LocalEndpoint;
        _api.PortForwardTarget = (_, _) => plainEndpoint;
        var server = Task.Run(async () =>
        {
            using var client = await plain.AcceptTcpClientAsync();
            await client.GetStream().WriteAsync("HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n"u8.ToArray());
        });

        var (exit, checks, output) = await CheckAsync();
        await server;

        Assert.True(exit == 1, output);
        Assert.Equal("fail", checks["ca service"].Status);
        Assert.Contains("TLS handshake failed", checks["ca service"].Detail);
    }

    [Fact]
    public async Task UnreachableApiServer_IsOneFailedCheck_NotACrash()
    {
        await _api.StopAsync();

        var (exit, checks, output) = await CheckAsync();

        Assert.True(exit == 1, output);
        Assert.Equal(["kubernetes api"], checks.Keys);
        Assert.Contains("cannot reach the Kubernetes API", checks["kubernetes api"].Detail);
        _api.Resume();
    }

    [Fact]
    public async Task TableOutput_MarksEachCheck_AndShowsTheFixUnderAFailure()
    {
        Install(desired: 2, updated: 2, ready: 1, notReadyOn: "node2");

        var stdout = new StringWriter();
        var exit = await WeftCli.RunAsync(["check", "--cluster", "--kubeconfig", _kubeconfig], stdout, TextWriter.Null);

        Assert.Equal(1, exit);
        var lines = stdout.ToString().Split('\n');
        Assert.StartsWith("✗ daemonset", lines[0]);
        Assert.Contains("fix: kubectl -n weft-system rollout status daemonset/weft-agent; weft check --node node2", lines[1]);
    }

    private async Task<(int Exit, Dictionary<string, (string Status, string Detail, string? Fix)> Checks, string Output)> CheckAsync()
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var exit = await WeftCli.RunAsync(["check", "--cluster", "--kubeconfig", _kubeconfig, "-o", "json"], stdout, stderr);
        var output = stdout + stderr.ToString();
        Assert.True(stdout.ToString().Length > 0, $"exit {exit}, nothing on stdout: {stderr}");
        var checks = JsonDocument.Parse(stdout.ToString()).RootElement.GetProperty("checks").EnumerateArray()
            .ToDictionary(
                c => c.GetProperty("name").GetString()!,
                c => (c.GetProperty("status").GetString()!, c.GetProperty("detail").GetString()!,
                    c.TryGetProperty("fix", out var fix) && fix.ValueKind == JsonValueKind.String ? fix.GetString() : null));
        return (exit, checks, output);
    }

    private void Install(int desired, int updated, int ready, string? notReadyOn = null, string? caAddress = CaAddress)
    {
        var args = new List<string> { "agent", "--kubernetes", "--trust-bundle", "/etc/weft/ca/bundle.crt" };
        if (caAddress is not null)
        {
            args.AddRange([ClusterChecks.CaAddressFlag, caAddress]);
        }

        _api.Apply(new V1DaemonSet
        {
            Metadata = new V1ObjectMeta { Name = "weft-agent", NamespaceProperty = "weft-system", Generation = 4, Labels = AgentLabels() },
            Spec = new V1DaemonSetSpec
            {
                Selector = new V1LabelSelector { MatchLabels = AgentLabels() },
                Template = new V1PodTemplateSpec { Spec = new V1PodSpec { Containers = [new V1Container { Name = "agent", Args = args }] } },
            },
            Status = new V1DaemonSetStatus
            {
                ObservedGeneration = 4,
                DesiredNumberScheduled = desired,
                CurrentNumberScheduled = desired,
                UpdatedNumberScheduled = updated,
                NumberReady = ready,
                NumberMisscheduled = 0,
            },
        });
        for (var i = 1; i <= desired; i++)
        {
            var node = $"node{i}";
            _api.Apply(Pod($"weft-agent-{i}", node, AgentLabels(), ready: node != notReadyOn));
        }
    }

    private void InstallCa(int replicas, int ready)
    {
        var labels = CaLabels();
        _api.Apply(new V1Deployment
        {
            Metadata = new V1ObjectMeta { Name = "weft-ca", NamespaceProperty = "weft-system", Labels = labels },
            Spec = new V1DeploymentSpec { Replicas = replicas, Selector = new V1LabelSelector { MatchLabels = labels }, Template = new V1PodTemplateSpec() },
            Status = new V1DeploymentStatus { Replicas = replicas, ReadyReplicas = ready },
        });
        _api.Apply(Pod("weft-ca-7f9c-a", "node1", labels, ready: ready > 0));
        _api.Apply(Pod("weft-ca-7f9c-b", "node2", labels, ready: ready > 1));
    }

    private static V1Pod Pod(string name, string node, Dictionary<string, string> labels, bool ready) => new()
    {
        Metadata = new V1ObjectMeta { Name = name, NamespaceProperty = "weft-system", Labels = labels },
        Spec = new V1PodSpec { NodeName = node },
        Status = new V1PodStatus
        {
            Phase = "Running",
            Conditions = [new V1PodCondition { Type = "Ready", Status = ready ? "True" : "False" }],
        },
    };

    private static Dictionary<string, string> AgentLabels() => new()
    {
        ["app.kubernetes.io/name"] = "weft",
        ["app.kubernetes.io/component"] = "agent",
    };

    private static Dictionary<string, string> CaLabels() => new()
    {
        ["app.kubernetes.io/name"] = "weft",
        ["app.kubernetes.io/component"] = "ca",
    };
}
