using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Weft.Harness;

namespace Weft.Tests.Gateway;

/// <summary>`weft gateway --inventory FILE` as a user runs it: a child process, curl as the client, SIGTERM to stop.</summary>
public class GatewayCommandTests
{
    [Fact]
    public async Task WeftGateway_RoutesCurlToTheBackend_PicksUpAFileChange_AndStopsOnSigterm()
    {
        await using var v1 = await EchoBackend.StartAsync("v1");
        await using var v2 = await EchoBackend.StartAsync("v2");
        var dir = Directory.CreateTempSubdirectory("weft-gateway-cli-").FullName;
        var inventory = Path.Combine(dir, "gateway.yaml");
        var (httpPort, adminPort) = (FreePort(), FreePort());
        string Yaml(string service) => GatewayYaml.Service("default", "v1", v1.Port) + GatewayYaml.Service("default", "v2", v2.Port) + $$"""
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
                  - {pathType: Prefix, path: /, backend: {service: {name: {{service}}, port: {number: 80} } } }

            """;
        await File.WriteAllTextAsync(inventory, Yaml("v1"));

        await using var gateway = ManagedProcess.StartWeft("gateway", "--inventory", inventory, "--http", $"127.0.0.1:{httpPort}", "--https", "off", "--admin", $"127.0.0.1:{adminPort}");
        try
        {
            Assert.Contains("\"Backend\":\"v1\"", await CurlUntilAsync(httpPort, "\"v1\"", gateway));

            await File.WriteAllTextAsync(inventory, Yaml("v2"));
            Assert.Contains("\"Backend\":\"v2\"", await CurlUntilAsync(httpPort, "\"v2\"", gateway));

            Assert.Equal(0, await gateway.StopAsync(TimeSpan.FromSeconds(60)));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    /// <summary>curl until the answer holds <paramref name="expected"/> (the process starts, the file reloads); fails after a generous minute.</summary>
    internal static async Task<string> CurlUntilAsync(int port, string expected, ManagedProcess gateway)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        var last = "";
        while (DateTime.UtcNow < deadline && !gateway.HasExited)
        {
            using var curl = Process.Start(new ProcessStartInfo("curl", ["-s", "--max-time", "5", "-H", "Host: web.example", $"http://127.0.0.1:{port}/hello"]) { RedirectStandardOutput = true })!;
            last = await curl.StandardOutput.ReadToEndAsync();
            await curl.WaitForExitAsync();
            if (last.Contains(expected, StringComparison.Ordinal))
            {
                return last;
            }

            await Task.Delay(200);
        }

        throw new Xunit.Sdk.XunitException($"no answer with {expected} (last: '{last}'); gateway output:\n{gateway.Output}");
    }

    /// <summary>Distinct free loopback ports: all held open at once while picked, so the kernel cannot hand out one twice.</summary>
    internal static int[] FreePorts(int count)
    {
        var listeners = Enumerable.Range(0, count).Select(_ => new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0)).ToList();
        try
        {
            listeners.ForEach(l => l.Start());
            return [.. listeners.Select(l => ((System.Net.IPEndPoint)l.LocalEndpoint).Port)];
        }
        finally
        {
            listeners.ForEach(l => l.Stop());
        }
    }

    internal static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
