using Weft.Gateway;
using Weft.Harness;
using Weft.Tests.Inventory.Kubernetes;

namespace Weft.Tests.Gateway;

/// <summary>`weft gateway --kubeconfig FILE` as a user runs it: a child process watching the fake API server, curl as the client.</summary>
public class GatewayKubernetesCommandTests
{
    [Fact]
    public async Task WeftGatewayWithKubeconfig_ServesAnIngressOfTheCluster_WritesItsStatus_AndStopsOnSigterm()
    {
        await using var backend = await EchoBackend.StartAsync("v1");
        await using var api = FakeApiServer.Start();
        var dir = Directory.CreateTempSubdirectory("weft-gateway-kube-cli-").FullName;
        var kubeconfig = api.WriteKubeconfig(Path.Combine(dir, "kubeconfig"));
        foreach (var obj in Weft.Inventory.InventoryYaml.Load(GatewayYaml.Service("default", "v1", backend.Port) + """
            ---
            apiVersion: networking.k8s.io/v1
            kind: Ingress
            metadata: {name: web, namespace: default}
            spec:
              ingressClassName: weft
              rules:
              - host: web.example
                http:
                  paths:
                  - {pathType: Prefix, path: /, backend: {service: {name: v1, port: {number: 80} } } }

            """, "test.yaml", GatewayApiKinds.All))
        {
            typeof(FakeApiServer).GetMethods().Single(m => m.Name == nameof(FakeApiServer.Apply) && m.IsGenericMethodDefinition)
                .MakeGenericMethod(obj.GetType()).Invoke(api, [obj]);
        }

        var (httpPort, adminPort) = (GatewayCommandTests.FreePort(), GatewayCommandTests.FreePort());
        await using var gateway = ManagedProcess.StartWeft("gateway", "--kubeconfig", kubeconfig, "--status-address", "192.0.2.44",
            "--http", $"127.0.0.1:{httpPort}", "--https", "off", "--admin", $"127.0.0.1:{adminPort}");
        try
        {
            Assert.Contains("\"Backend\":\"v1\"", await GatewayCommandTests.CurlUntilAsync(httpPort, "\"v1\"", gateway));

            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (api.Get<k8s.Models.V1Ingress>("default", "web")?["status"]?["loadBalancer"]?["ingress"]?[0]?["ip"]?.GetValue<string>() != "192.0.2.44")
            {
                Assert.True(DateTime.UtcNow < deadline, $"the Ingress status was not written; gateway output:\n{gateway.Output}");
                await Task.Delay(100);
            }

            Assert.Equal(0, await gateway.StopAsync(TimeSpan.FromSeconds(60)));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task WeftGatewayWithKubeconfig_AGatewayOnAnAddressOfItsOwn_ReportsTheBoundIpInStatus_TheOtherTheSharedOne()
    {
        await using var backend = await EchoBackend.StartAsync("v1");
        await using var api = FakeApiServer.Start();
        var dir = Directory.CreateTempSubdirectory("weft-gateway-kube-own-").FullName;
        var kubeconfig = api.WriteKubeconfig(Path.Combine(dir, "kubeconfig"));
        foreach (var obj in Weft.Inventory.InventoryYaml.Load(GatewayYaml.Service("default", "v1", backend.Port)
            + GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}", ns: "default", name: "own")
            + GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}", ns: "default", name: "shared") + """
            ---
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: web, namespace: default}
            spec:
              parentRefs: [{name: own}]
              rules: [{backendRefs: [{name: v1, port: 80}]}]

            """, "test.yaml", GatewayApiKinds.All))
        {
            typeof(FakeApiServer).GetMethods().Single(m => m.Name == nameof(FakeApiServer.Apply) && m.IsGenericMethodDefinition)
                .MakeGenericMethod(obj.GetType()).Invoke(api, [obj]);
        }

        var ports = GatewayCommandTests.FreePorts(3);
        var (httpPort, ownPort, adminPort) = (ports[0], ports[1], ports[2]);
        await using var gateway = ManagedProcess.StartWeft("gateway", "--kubeconfig", kubeconfig, "--status-address", "192.0.2.44",
            "--http", $"127.0.0.1:{httpPort}", "--https", "off", "--admin", $"127.0.0.1:{adminPort}", "--gateway-http", $"default/own=127.0.0.1:{ownPort}");
        try
        {
            // Bound to 127.0.0.1: that is where Gateway own is reached, and what its status says.
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
            string? Address(string name) => api.Get<GatewayResource>("default", name)?["status"]?["addresses"]?.ToJsonString();
            while (Address("own") != """[{"type":"IPAddress","value":"127.0.0.1"}]""" || Address("shared") != """[{"type":"IPAddress","value":"192.0.2.44"}]""")
            {
                Assert.True(DateTime.UtcNow < deadline && !gateway.HasExited, $"status.addresses: own {Address("own")}, shared {Address("shared")}; gateway output:\n{gateway.Output}");
                await Task.Delay(100);
            }

            Assert.Contains("\"Backend\":\"v1\"", await GatewayCommandTests.CurlUntilAsync(ownPort, "\"v1\"", gateway));
            Assert.Equal(0, await gateway.StopAsync(TimeSpan.FromSeconds(60)));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task WeftGateway_InventoryWithKubernetesFlags_IsAUsageError()
    {
        await using var gateway = ManagedProcess.StartWeft("gateway", "--inventory", "/nonexistent.yaml", "--kubeconfig", "/nonexistent", "--http", "127.0.0.1:0", "--https", "off", "--admin", "off");

        Assert.NotEqual(0, await gateway.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        Assert.Contains("--inventory is the standalone mode", gateway.Stderr);
    }
}
