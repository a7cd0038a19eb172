using System.Globalization;
using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;
using Weft.Ca;
using Weft.Harness;
using Weft.Identity;

namespace Weft.Tests.EndToEnd;

/// <summary>
/// A root rotation of the CA service in the netns cluster while a1 (node1) sends to b1 (node2) over mTLS without
/// pause, each send in a new tunnel: the CA follows its files and publishes root-cert.pem and signing-root.pem,
/// the agents follow those. The steps are docs/ca.md's, done to the files as an operator would.
/// </summary>
[Trait(TestGroups.Trait, TestGroups.EndToEnd)]
[Collection(NetnsCollection.Name)]
public class CaRotationMeshTests
{
    private static ClusterSpec Spec() => new(
        new NodeSpec("node1", new PodSpec("demo", "a1"), new PodSpec("demo", "x1")),
        new NodeSpec("node2", new PodSpec("demo", "b1")));

    private static string Inventory(NetnsCluster c) => c.InventoryYaml(new InventoryOptions { Omit = [c.Pod("demo", "x1")] });

    [PrivilegedFact]
    public async Task RootRotatesThroughEveryStep_WhileTrafficFlows_NoConnectionFails_AndTheOldRootIsRefusedAtTheEnd()
    {
        await using var mesh = await MeshCluster.StartAsync(Spec(), Inventory, MeshIdentity.CaServicePublishing, "--tunnel-idle-seconds", "1");
        var ca = mesh.Ca!;
        var oldAuthority = CertificateAuthority.Load(ca);
        using var oldRoot = X509Certificate2.CreateFromPem(File.ReadAllText(ca.CertificatePath));
        var next = SelfSignedRoot.Write(Path.Combine(Path.GetDirectoryName(ca.CertificatePath)!, "..", "next-root"), MeshCluster.TrustDomain);
        using var newRoot = X509Certificate2.CreateFromPem(File.ReadAllText(next.CertificatePath));
        var (client, server) = (mesh.Cluster.Pod("demo", "a1"), mesh.Cluster.Pod("demo", "b1"));
        await using var serve = await MeshCluster.StartServerAsync(server, "--port", "8080", "--reply-bytes", "4096");
        var agents = new[] { mesh.Agent("node1"), mesh.Agent("node2") };

        // Traffic without pause: each send opens a new connection; a gap over the idle timeout makes it a new tunnel, a new handshake.
        using var stop = new CancellationTokenSource();
        var failures = new List<string>();
        var sends = 0;
        var traffic = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                var run = await MeshCluster.RunPeerAsync(client, TimeSpan.FromMinutes(1), "send", "--to", $"{server.Address}:8080",
                    "--bytes", "10000", "--expect-reply-bytes", "4096", "--timeout-ms", "20000");
                Interlocked.Increment(ref sends);
                if (run.ExitCode != 0)
                {
                    lock (failures)
                    {
                        failures.Add(run.ToString());
                    }
                }

                await Task.Delay(sends % 2 == 0 ? 1500 : 100);
            }
        });

        try
        {
            await WaitForSendsAsync(() => sends, 4);
            await WaitUntilAsync(async () => await AllAsync(mesh, "weft_certificates_from_other_roots", v => v == 0), 30);

            // 1. Add the new root to the CA's bundle; the CA publishes both, the agents trust both.
            Replace(ca.TrustBundlePath, oldRoot.ExportCertificatePem() + "\n" + newRoot.ExportCertificatePem() + "\n");
            await WaitUntilAsync(() => Task.FromResult(agents.All(a => a.StderrLines.Any(l => l.Contains("trust bundle reloaded: 2 root(s)", StringComparison.Ordinal)))), 60);
            await WaitForSendsAsync(() => sends, sends + 3);

            // 2. Switch the signer to the new root (certificate and key); each agent renews what the old root signed.
            Replace(ca.KeyPath, File.ReadAllText(next.KeyPath), ca.CertificatePath, File.ReadAllText(next.CertificatePath));
            await WaitUntilAsync(() => Task.FromResult(mesh.CaService!.StderrLines.Any(l => l.Contains("CA files reloaded: signing with", StringComparison.Ordinal)
                && l.Contains(newRoot.Thumbprint, StringComparison.Ordinal))), 60);
            await WaitUntilAsync(() => Task.FromResult(agents.All(a => a.StderrLines.Any(l => l.Contains($"the CA signs with root {newRoot.Thumbprint}", StringComparison.Ordinal)))), 60);
            await WaitUntilAsync(async () => await AllAsync(mesh, "weft_certificates_from_other_roots", v => v == 0)
                && await AllAsync(mesh, "weft_certificate_renewals_total", v => v >= 1), 90);
            await WaitForSendsAsync(() => sends, sends + 3);

            // Node certificates are renewed from the new root too (standalone: the CA authenticates nodes by them).
            foreach (var node in mesh.Cluster.Nodes)
            {
                await ReissueNodeCertificateAsync(mesh, node, CertificateAuthority.Load(ca));
            }

            // 3. Remove the old root: the CA publishes the new one alone.
            Replace(ca.TrustBundlePath, newRoot.ExportCertificatePem() + "\n");
            await WaitUntilAsync(() => Task.FromResult(agents.All(a => a.StderrLines.Any(l => l.Contains($"trust bundle reloaded: 1 root(s): {newRoot.Thumbprint}", StringComparison.Ordinal)))), 60);
            await WaitForSendsAsync(() => sends, sends + 4);
        }
        finally
        {
            stop.Cancel();
            await traffic;
        }

        Assert.True(failures.Count == 0, $"{failures.Count} of {sends} connections failed during the rotation:\n{string.Join("\n", failures)}");
        Assert.True(sends >= 14, $"only {sends} connections during the rotation");
        Assert.Equal(0, Value(await MetricsAsync(mesh.Cluster.Node("node1")), "weft_certificates_from_other_roots"));
        Assert.Equal(0, Value(await MetricsAsync(mesh.Cluster.Node("node2")), "weft_certificates_from_other_roots"));
        Assert.DoesNotContain(MeshCluster.Flows(agents[1]), f => f.GetProperty("direction").GetString() == "inbound"
            && f.GetProperty("response_flags").GetString() != "-");
        var caLog = mesh.CaService!.StderrLines;
        Assert.Contains(caLog, l => l.Contains("ca: trust bundle published", StringComparison.Ordinal) && l.Contains("1 root(s)", StringComparison.Ordinal));
        Assert.DoesNotContain(caLog, l => l.Contains("refused", StringComparison.Ordinal));

        // Still flowing after the rotation, on certificates of the new root.
        var after = await MeshCluster.RunPeerAsync(client, TimeSpan.FromMinutes(1), "send", "--to", $"{server.Address}:8080",
            "--bytes", "10000", "--expect-reply-bytes", "4096", "--timeout-ms", "20000");
        Assert.True(after.ExitCode == 0, after.ToString());

        // A peer whose certificate chains only to the old root (a's own identity) is refused at the handshake.
        using var stale = TunnelPeer.IssueSvid(oldAuthority, ca.TrustBundlePath, "a");
        var inboundBefore = MeshCluster.Flows(agents[1]).Count;
        await using (var handshake = mesh.Cluster.Pod("demo", "x1").StartProcess("openssl", "s_client", "-connect", $"{server.Address}:15008", "-alpn", "h2",
            "-cert", stale.CertificatePath, "-key", stale.KeyPath, "-CAfile", next.CertificatePath, "-verify_return_error", "-quiet"))
        {
            try
            {
                await handshake.WaitForExitAsync(TimeSpan.FromSeconds(30));
            }
            catch (TimeoutException)
            {
                // openssl waits on its input after the handshake; what the agent recorded is what counts.
            }
        }

        var refused = await PodTrafficTests.WaitForFlowAsync(agents[1], f => f.GetProperty("response_flags").GetString() == "TLS_FAILURE");
        Assert.Contains("does not chain to a root in the trust bundle", refused.GetProperty("error").GetString());
        Assert.True(MeshCluster.Flows(agents[1]).Count > inboundBefore);
        Assert.Empty(failures);
    }

    private static async Task ReissueNodeCertificateAsync(MeshCluster mesh, ClusterNode node, CertificateAuthority authority)
    {
        var (certificate, key) = await mesh.IssueNodeCertificateAsync(node);
        var fresh = Directory.CreateTempSubdirectory("weft-node-").FullName;
        try
        {
            var files = CaCertificates.WriteNodeCertificate(authority, new NodeIdentity(MeshCluster.TrustDomain, node.Name), fresh, TimeSpan.FromDays(1));
            Replace(key, File.ReadAllText(files.KeyPath), certificate, File.ReadAllText(files.CertificatePath));
        }
        finally
        {
            Directory.Delete(fresh, recursive: true);
        }
    }

    /// <summary>Writes aside and renames in (two files: both written first), as a Secret volume update or a config tool does.</summary>
    private static void Replace(string path, string contents, string? secondPath = null, string? secondContents = null)
    {
        File.WriteAllText(path + ".new", contents);
        if (secondPath is not null)
        {
            File.WriteAllText(secondPath + ".new", secondContents);
        }

        File.Move(path + ".new", path, overwrite: true);
        if (secondPath is not null)
        {
            File.Move(secondPath + ".new", secondPath, overwrite: true);
        }
    }

    private static async Task WaitForSendsAsync(Func<int> sends, int atLeast)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(2);
        while (sends() < atLeast)
        {
            Assert.True(DateTime.UtcNow < deadline, $"only {sends()} sends, waiting for {atLeast}");
            await Task.Delay(200);
        }
    }

    private static async Task<bool> AllAsync(MeshCluster mesh, string metric, Func<double, bool> holds)
    {
        foreach (var node in mesh.Cluster.Nodes)
        {
            if (!holds(Value(await MetricsAsync(node), metric)))
            {
                return false;
            }
        }

        return true;
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition, double seconds)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(seconds);
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"condition not met in {seconds} s");
            await Task.Delay(500);
        }
    }

    private static async Task<string> MetricsAsync(ClusterNode node)
    {
        await using var process = node.StartProcess("curl", "-sS", "--max-time", "10", "http://127.0.0.1:15020/metrics");
        var exit = await process.WaitForExitAsync(TimeSpan.FromSeconds(60));
        Assert.True(exit == 0, $"curl /metrics exited {exit}: {process.Stderr}");
        return process.Stdout;
    }

    private static double Value(string exposition, string name)
    {
        var match = Regex.Match(exposition, $"^{Regex.Escape(name)} (\\S+)$", RegexOptions.Multiline);
        Assert.True(match.Success, $"no {name} in /metrics:\n{exposition}");
        return double.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture);
    }
}
