using System.Diagnostics;
using Weft.Harness;

namespace Weft.Tests.Gateway;

/// <summary>
/// `weft gateway --gateway-http ... --gateway-https ...` as a user runs it: a child process, curl as the client over plain
/// HTTP and real TLS (SNI by --resolve), each Gateway answering on its own addresses with its own routes, the shared
/// --http and --https serving both, and `weft routes` saying which address serves what.
/// </summary>
public class GatewayOwnAddressCommandTests
{
    private const string Infra = "gateway-conformance-infra";

    [Fact]
    public async Task WeftGateway_TwoGatewaysOnAddressesOfTheirOwn_EachAnswersWithItsRoutes_TheSharedAddressesServeBoth()
    {
        await using var v1 = await EchoBackend.StartAsync("v1");
        await using var v2 = await EchoBackend.StartAsync("v2");
        var (certA, secretA) = GatewayLoopback.TlsSecret(Infra, "cert-a", "a.example");
        var (certB, secretB) = GatewayLoopback.TlsSecret(Infra, "cert-b", "b.example");

        // Gateway a sends everything (/) to v1; Gateway b sends /b to v2; each has an HTTP and an HTTPS listener.
        var yaml = GatewayYaml.Service(Infra, "v1", v1.Port) + GatewayYaml.Service(Infra, "v2", v2.Port)
            + GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}\n- {name: https, port: 443, protocol: HTTPS, hostname: a.example, tls: {certificateRefs: [{name: cert-a}]}}", name: "a")
            + GatewayYaml.Gateway("- {name: http, port: 80, protocol: HTTP}\n- {name: https, port: 443, protocol: HTTPS, hostname: b.example, tls: {certificateRefs: [{name: cert-b}]}}", name: "b")
            + secretA + secretB + GatewayOwnAddressTests.Route("route-a", "a", "v1") + GatewayOwnAddressTests.Route("route-b", "b", "v2", "/b");
        var dir = Directory.CreateTempSubdirectory("weft-gateway-own-").FullName;
        var inventory = Path.Combine(dir, "gateway.yaml");
        await File.WriteAllTextAsync(inventory, yaml);

        var ports = GatewayCommandTests.FreePorts(7);
        var (http, https, admin, httpA, httpB, httpsA, httpsB) = (ports[0], ports[1], ports[2], ports[3], ports[4], ports[5], ports[6]);
        await using var gateway = ManagedProcess.StartWeft("gateway", "--inventory", inventory,
            "--http", $"127.0.0.1:{http}", "--https", $"127.0.0.1:{https}", "--admin", $"127.0.0.1:{admin}",
            "--gateway-http", $"{Infra}/a=127.0.0.1:{httpA}", "--gateway-http", $"{Infra}/b=127.0.0.1:{httpB}",
            "--gateway-https", $"{Infra}/a=127.0.0.1:{httpsA}", "--gateway-https", $"{Infra}/b=127.0.0.1:{httpsB}");
        try
        {
            await CurlUntilAsync(gateway, $"http://127.0.0.1:{http}/", "200 v1");

            // The same request, /b, answered differently: a's address has only a's routes, b's only b's.
            Assert.Equal("200 v1", await CurlAsync($"http://127.0.0.1:{httpA}/b"));
            Assert.Equal("200 v2", await CurlAsync($"http://127.0.0.1:{httpB}/b"));
            Assert.Equal("404", await CurlAsync($"http://127.0.0.1:{httpB}/"));

            // --http serves both Gateways together: /b by b's longer prefix, the rest by a's.
            Assert.Equal("200 v2", await CurlAsync($"http://127.0.0.1:{http}/b"));
            Assert.Equal("200 v1", await CurlAsync($"http://127.0.0.1:{http}/"));

            // HTTPS, SNI by --resolve: each Gateway's own TLS address knows only its own name and routes.
            Assert.Equal("200 v1", await CurlAsync($"https://a.example:{httpsA}/b", "--resolve", $"a.example:{httpsA}:127.0.0.1"));
            Assert.Equal("200 v2", await CurlAsync($"https://b.example:{httpsB}/b", "--resolve", $"b.example:{httpsB}:127.0.0.1"));
            Assert.Equal("000", await CurlAsync($"https://b.example:{httpsA}/b", "--resolve", $"b.example:{httpsA}:127.0.0.1")); // no certificate: refused

            // a's name at the handshake, b's as the HTTP/2 :authority: still a's routes only (a's / has no host b.example).
            Assert.Equal("404", await CurlAsync($"https://a.example:{httpsA}/b", "--http2", "-H", "Host: b.example", "--resolve", $"a.example:{httpsA}:127.0.0.1"));
            Assert.Equal("200 v2", await CurlAsync($"https://a.example:{https}/b", "--http2", "-H", "Host: b.example", "--resolve", $"a.example:{https}:127.0.0.1"));
            Assert.Equal(certA.Thumbprint, (await GatewayOwnAddressTests.HandshakeAsync(httpsA, "a.example"))?.Thumbprint);
            Assert.Equal(certB.Thumbprint, (await GatewayOwnAddressTests.HandshakeAsync(httpsB, "b.example"))?.Thumbprint);

            // --https serves both names with their certificates.
            Assert.Equal("200 v1", await CurlAsync($"https://a.example:{https}/", "--resolve", $"a.example:{https}:127.0.0.1"));
            Assert.Equal("200 v2", await CurlAsync($"https://b.example:{https}/b", "--resolve", $"b.example:{https}:127.0.0.1"));
            Assert.Equal(certB.Thumbprint, (await GatewayOwnAddressTests.HandshakeAsync(https, "b.example"))?.Thumbprint);

            // weft routes: the shared table, then each Gateway's addresses with its routes.
            var (routesFile, routesArguments) = WeftExecutable.Command(["routes", "--admin", $"127.0.0.1:{admin}"]);
            var table = await RunAsync(routesFile, routesArguments);
            Assert.Contains($"Gateway {Infra}/a on http://127.0.0.1:{httpA}, https://127.0.0.1:{httpsA}:\n", table);
            Assert.Contains($"Gateway {Infra}/b on http://127.0.0.1:{httpB}, https://127.0.0.1:{httpsB}:\n", table);
            var ofB = table[table.IndexOf($"Gateway {Infra}/b on", StringComparison.Ordinal)..];
            Assert.Contains($"HTTPRoute {Infra}/route-b", ofB);
            Assert.DoesNotContain($"HTTPRoute {Infra}/route-a", ofB);

            Assert.Equal(0, await gateway.StopAsync(TimeSpan.FromSeconds(60)));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task WeftGateway_AGatewayNamedTwiceOrAnAddressGivenTwice_IsRefusedBeforeServing()
    {
        var port = GatewayCommandTests.FreePort();
        await using var gateway = ManagedProcess.StartWeft("gateway", "--inventory", "/nonexistent.yaml", "--http", $"127.0.0.1:{port}", "--https", "off", "--admin", "off",
            "--gateway-http", $"{Infra}/a=127.0.0.1:{port}");

        Assert.Equal(2, await gateway.WaitForExitAsync(TimeSpan.FromSeconds(60)));
        Assert.Contains($"--gateway-http {Infra}/a 127.0.0.1:{port} overlaps --http 127.0.0.1:{port}", gateway.Stderr);
    }

    /// <summary>"STATUS BACKEND" (200 and the echo backend's name), or the status alone; "000" when no HTTP answer came (e.g. TLS refused).</summary>
    private static async Task<string> CurlAsync(string url, params string[] more)
    {
        var output = await RunAsync("curl", ["-sk", "--max-time", "5", "-w", "\n%{http_code}", .. more, url]);
        var lines = output.Split('\n');
        var code = lines[^1].Trim();
        var backend = System.Text.RegularExpressions.Regex.Match(output, "\"Backend\":\"([^\"]+)\"");
        return backend.Success ? $"{code} {backend.Groups[1].Value}" : code;
    }

    private static async Task<string> RunAsync(string file, IEnumerable<string> arguments)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var argument in arguments)
        {
            start.ArgumentList.Add(argument);
        }

        using var process = Process.Start(start)!;
        var output = await process.StandardOutput.ReadToEndAsync();
        await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        return output;
    }

    private static async Task CurlUntilAsync(ManagedProcess gateway, string url, string expected)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        var last = "";
        while (DateTime.UtcNow < deadline && !gateway.HasExited)
        {
            last = await CurlAsync(url);
            if (last == expected)
            {
                return;
            }

            await Task.Delay(200);
        }

        throw new Xunit.Sdk.XunitException($"{url} never answered {expected} (last: '{last}'); gateway output:\n{gateway.Output}");
    }
}
