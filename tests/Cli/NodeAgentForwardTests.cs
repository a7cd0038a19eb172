using System.Net;
using System.Text.Json;
using k8s.Models;
using Weft.Cli;
using Weft.Tests.Admin;
using Weft.Tests.Inventory.Kubernetes;
using Weft.Tests.Telemetry;

namespace Weft.Tests.Cli;

/// <summary>
/// <c>weft flows|workloads --node NAME</c>: the agent on another node through the Kubernetes API, against a wire-level
/// fake API server whose port-forward WebSocket reaches a real admin API on loopback.
/// </summary>
public sealed class NodeAgentForwardTests : IAsyncLifetime
{
    private readonly FakeAgent _agent = new();
    private readonly string _directory = Directory.CreateTempSubdirectory("weft-cli-node-").FullName;
    private FakeApiServer _api = null!;
    private string _kubeconfig = null!;

    public Task InitializeAsync()
    {
        _api = FakeApiServer.Start();
        _kubeconfig = _api.WriteKubeconfig(Path.Combine(_directory, "kubeconfig"));
        _api.Apply(AgentPod("weft-agent-x7k2p", "node1"));
        _api.Apply(AgentPod("weft-agent-q9d4m", "node2"));
        _api.Apply(new V1Pod
        {
            Metadata = new V1ObjectMeta { Name = "a1", NamespaceProperty = "demo", Labels = new Dictionary<string, string> { ["app"] = "a" } },
            Spec = new V1PodSpec { NodeName = "node3" },
        });
        var agentEndpoint = IPEndPoint.Parse(_agent.Address);
        _api.PortForwardTarget = (pod, port) => pod == "weft-agent-x7k2p" && port == PodPortForward.AdminPort ? agentEndpoint : null;
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        await _api.DisposeAsync();
        _agent.Dispose();
        Directory.Delete(_directory, recursive: true);
    }

    private static V1Pod AgentPod(string name, string node) => new()
    {
        Metadata = new V1ObjectMeta
        {
            Name = name,
            NamespaceProperty = "weft-system",
            Labels = new Dictionary<string, string>
            {
                ["app.kubernetes.io/name"] = "weft",
                ["app.kubernetes.io/component"] = "agent",
                ["app.kubernetes.io/part-of"] = "weft",
            },
        },
        Spec = new V1PodSpec { NodeName = node },
        Status = new V1PodStatus { Phase = "Running" },
    };

    private async Task<(int Exit, string Out, string Err)> FlowsAsync(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var exit = await FlowsCommand.RunAsync(args, stdout, stderr, CancellationToken.None);
        return (exit, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public async Task FlowsWithNode_ReachesThatNodesAgent_ThroughThePortForward()
    {
        var flow = TelemetryFixtures.Outbound();
        _agent.Flows.Opened(flow);

        var (exit, output, error) = await FlowsAsync("--node", "node1", "--kubeconfig", _kubeconfig, "-o", "json");

        Assert.True(exit == 0, error);
        var line = Assert.Single(output.TrimEnd('\n').Split('\n'));
        Assert.Equal(flow.Id, JsonDocument.Parse(line).RootElement.GetProperty("id").GetInt64());
        var list = Assert.Single(_api.Requests, r => r.Path == "/api/v1/namespaces/weft-system/pods");
        Assert.Equal("spec.nodeName=node1", list.Query["fieldSelector"]);
        Assert.Contains("app.kubernetes.io/component=agent", list.Query["labelSelector"]);
        Assert.Contains(_api.Requests, r => r.Path == "/api/v1/namespaces/weft-system/pods/weft-agent-x7k2p/portforward" && r.Query["ports"] == "15000");
    }

    [Fact]
    public async Task ViewsWithNode_ShowThatNodesAgentsInventory()
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var exit = await ViewsCommand.RunAsync("workloads", ["--node", "node1", "--kubeconfig", _kubeconfig], stdout, stderr, CancellationToken.None);
        Assert.True(exit == 0, stderr.ToString());
        Assert.StartsWith("NAMESPACE  POD NAME", stdout.ToString());
        Assert.Contains("reviews-v1-7d9f8c6b5-x2k4q", stdout.ToString());
    }

    [Fact]
    public async Task CheckWithNode_ChecksThatNodesAgent_NotThisMachine()
    {
        var stdout = new StringWriter();
        var exit = await WeftCli.RunAsync(["check", "--node", "node1", "--kubeconfig", _kubeconfig, "-o", "json"], stdout, TextWriter.Null);

        Assert.True(exit == 0, stdout.ToString());
        var checks = JsonDocument.Parse(stdout.ToString()).RootElement.GetProperty("checks").EnumerateArray()
            .ToDictionary(c => c.GetProperty("name").GetString()!, c => c.GetProperty("status").GetString());
        Assert.Equal(["agent", "inventory", "certificates"], checks.Keys);
        Assert.All(checks.Values, status => Assert.Equal("ok", status));
        Assert.Contains(_api.Requests, r => r.Path == "/api/v1/namespaces/weft-system/pods/weft-agent-x7k2p/portforward" && r.Query["ports"] == "15000");
    }

    [Fact]
    public async Task NodeWithoutAnAgentPod_GetsOneClearErrorLine()
    {
        var (exit, output, error) = await FlowsAsync("--node", "node3", "--kubeconfig", _kubeconfig);
        Assert.Equal(1, exit);
        Assert.Equal("", output);
        var line = Assert.Single(error.TrimEnd('\n').Split('\n'));
        Assert.StartsWith("weft: no Weft agent pod on node 'node3' (namespace weft-system", line);
    }

    [Fact]
    public async Task RefusedPortForward_NamesTheWeftCliRole()
    {
        _api.FailNext("pods/portforward", HttpStatusCode.Forbidden);
        var (exit, _, error) = await FlowsAsync("--node", "node1", "--kubeconfig", _kubeconfig);
        Assert.True(exit == 1, error);
        var line = Assert.Single(error.TrimEnd('\n').Split('\n'));
        Assert.StartsWith("weft: the Kubernetes API refused the port-forward to weft-system/weft-agent-x7k2p (403)", line);
        Assert.Contains("weft-cli Role", line);
    }

    [Fact]
    public async Task AgentNotListening_ReportsTheKubeletsError()
    {
        _api.PortForwardTarget = (_, _) => null;
        var (exit, _, error) = await FlowsAsync("--node", "node1", "--kubeconfig", _kubeconfig);
        Assert.Equal(1, exit);
        var line = Assert.Single(error.TrimEnd('\n').Split('\n'));
        Assert.StartsWith("weft: port-forward to weft-system/weft-agent-x7k2p on node 'node1' port 15000 failed: error forwarding port 15000", line);
    }

    [Fact]
    public async Task NoKubeconfig_GetsOneClearErrorLine()
    {
        var (exit, _, error) = await FlowsAsync("--node", "node1", "--kubeconfig", Path.Combine(_directory, "missing"));
        Assert.Equal(1, exit);
        Assert.Equal("weft: --kubeconfig " + Path.Combine(_directory, "missing") + ": no such file", error.TrimEnd('\n'));
    }
}
