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

    /// <summary>
    /// `weft gateway` runs socket completions on the runtime's socket threads, one per core, instead of queueing them to the
    /// thread pool (docs/benchmark.md, "The gateway's socket completions"); a value the user gives
    /// DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS wins. The runtime names those threads ".NET Sockets" and makes one per
    /// core only when completions run inline (else one per 30 cores, 8 or 12 on ARM).
    /// </summary>
    [Theory]
    [InlineData(null)]
    [InlineData("0")]
    public async Task WeftGateway_RunsSocketCompletionsOnOneSocketThreadPerCore_UnlessTheUserSaysOtherwise(string? userValue)
    {
        var dir = Directory.CreateTempSubdirectory("weft-gateway-inline-").FullName;
        var inventory = Path.Combine(dir, "gateway.yaml");
        await File.WriteAllTextAsync(inventory, "apiVersion: v1\nkind: Namespace\nmetadata: {name: default}\n");
        var port = FreePort();
        var environment = userValue is null ? new Dictionary<string, string>() : new Dictionary<string, string> { ["DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS"] = userValue };
        await using var gateway = ManagedProcess.StartWeft(environment, "gateway", "--inventory", inventory, "--http", $"127.0.0.1:{port}", "--https", "off", "--admin", "off");
        try
        {
            // Answered (404: no route) once the listener and the socket engine are up.
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
            using var client = new HttpClient(new SocketsHttpHandler { UseProxy = false });
            while (true)
            {
                Assert.True(DateTime.UtcNow < deadline && !gateway.HasExited, $"the gateway did not answer; output:\n{gateway.Output}");
                try
                {
                    using var response = await client.GetAsync($"http://127.0.0.1:{port}/");
                    Assert.Equal(HttpStatusCode.NotFound, response.StatusCode);
                    break;
                }
                catch (HttpRequestException)
                {
                    await Task.Delay(100);
                }
            }

            var socketThreads = Directory.GetDirectories($"/proc/{gateway.Pid}/task")
                .Count(task => File.ReadAllText(Path.Join(task, "comm")).Trim() == ".NET Sockets");
            if (userValue is null)
            {
                Assert.Equal(Environment.ProcessorCount, socketThreads);
            }
            else
            {
                Assert.InRange(socketThreads, 1, Math.Max(1, Environment.ProcessorCount - 1));
            }

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
    internal static int[] FreePorts(int count) => Harness.LoopbackPorts.Free(count);

    internal static int FreePort() => Harness.LoopbackPorts.Free();
}
