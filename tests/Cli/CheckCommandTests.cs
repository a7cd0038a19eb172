using System.Text.Json;
using Weft.Cli;
using Weft.Tests.Admin;

namespace Weft.Tests.Cli;

/// <summary><c>weft check</c>'s verdicts on what it reads, and its agent checks against a real admin API on loopback.</summary>
public sealed class CheckCommandTests : IDisposable
{
    private static readonly DateTimeOffset Now = new(2026, 12, 1, 12, 0, 0, TimeSpan.Zero);
    private readonly FakeAgent _agent = new();

    public void Dispose() => _agent.Dispose();

    private static async Task<(int Exit, JsonElement Report, string Err)> CheckAsync(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var exit = await WeftCli.RunAsync(["check", "-o", "json", .. args], stdout, stderr);
        return (exit, JsonDocument.Parse(stdout.ToString()).RootElement, stderr.ToString());
    }

    private static JsonElement Entry(JsonElement report, string name) =>
        report.GetProperty("checks").EnumerateArray().Single(c => c.GetProperty("name").GetString() == name);

    [Theory]
    [InlineData("6.18.44-fc-v1045", true)]
    [InlineData("5.15.0-91-generic", true)]
    [InlineData("5.14.21", false)]
    [InlineData("4.19.0-27-amd64", false)]
    [InlineData("garbage", false)]
    public void Kernel_PassesFrom515(string release, bool passes)
    {
        var check = CheckCommand.KernelCheck(release);

        Assert.Equal(passes ? CheckStatus.Ok : CheckStatus.Fail, check.Status);
        Assert.Contains(release, check.Detail);
        Assert.True(passes || check.Fix!.Contains("5.15", StringComparison.Ordinal));
    }

    [Fact]
    public void Capabilities_NamesEachMissingOne()
    {
        // CAP_NET_ADMIN (bit 12) only
        var check = CheckCommand.CapabilitiesCheck(["Name:\tweft", "CapEff:\t0000000000001000"]);

        Assert.Equal(CheckStatus.Fail, check.Status);
        Assert.Equal("missing CAP_BPF, CAP_SYS_ADMIN", check.Detail);
        Assert.Equal(CheckStatus.Ok, CheckCommand.CapabilitiesCheck(["CapEff:\t000001ffffffffff"]).Status);
    }

    private static JsonElement Certificates(params object[] entries) => JsonSerializer.SerializeToElement(entries);

    [Fact]
    public void Certificates_AnAuthorityWithinTheWarning_Fails_ALeafIsHeldToItsRenewal()
    {
        var soonRoot = new { name = "O=weft, CN=weft root", type = "Root", status = "Available", valid = true, not_after = Now.AddDays(10) };
        var leaf = new { name = "spiffe://cluster.local/ns/demo/sa/a", type = "Leaf", status = "Available", valid = true, not_after = Now.AddHours(20), renew_at = Now.AddHours(8) };
        var overdue = new { name = "spiffe://cluster.local/ns/demo/sa/b", type = "Leaf", status = "Available", valid = true, not_after = Now.AddHours(2), renew_at = Now.AddHours(-3) };

        var failing = CheckCommand.CertificatesCheck(Certificates(soonRoot, leaf), Now, TimeSpan.FromDays(30));
        Assert.Equal(CheckStatus.Fail, failing.Status);
        Assert.Equal("Root O=weft, CN=weft root expires in 10d (2026-12-11T12:00:00Z)", failing.Detail);
        Assert.Contains("rotate the CA", failing.Fix);

        var passing = CheckCommand.CertificatesCheck(Certificates(soonRoot, leaf), Now, TimeSpan.FromDays(7));
        Assert.Equal(CheckStatus.Ok, passing.Status);
        Assert.Equal("2 valid; the first CA or root expires in 10d", passing.Detail);

        var stuck = CheckCommand.CertificatesCheck(Certificates(leaf, overdue), Now, TimeSpan.FromDays(30));
        Assert.Equal(CheckStatus.Fail, stuck.Status);
        Assert.Contains("Leaf spiffe://cluster.local/ns/demo/sa/b should have renewed at 2026-12-01T09:00:00Z", stuck.Detail);
        Assert.DoesNotContain("sa/a", stuck.Detail);
    }

    [Fact]
    public void Inventory_NeverLoaded_Fails_ElseSaysItsVersionAndAge()
    {
        var loaded = JsonSerializer.SerializeToElement(new { inventory_version = 3, inventory_loaded_at = Now.AddMinutes(-5) });
        var never = JsonSerializer.SerializeToElement(new { inventory_version = 0, inventory_loaded_at = DateTimeOffset.MinValue });

        Assert.Equal(Check.Ok("inventory", "version 3, last changed 5m ago"), CheckCommand.InventoryCheck(loaded, Now));
        Assert.Equal(CheckStatus.Fail, CheckCommand.InventoryCheck(never, Now).Status);
    }

    [Fact]
    public void Table_MarksEachCheck_ShowsTheFixUnderAFailure_AndCountsFailures()
    {
        var text = CheckCommand.Table([Check.Ok("kernel", "6.18 (≥ 5.15)"), Check.Fail("bpffs", "/sys/fs/bpf is not a bpf filesystem", "mount -t bpf bpf /sys/fs/bpf"), Check.Skip("certificates", "the agent did not answer")]);

        Assert.Equal(
            """
            ✓ kernel        6.18 (≥ 5.15)
            ✗ bpffs         /sys/fs/bpf is not a bpf filesystem
                            fix: mount -t bpf bpf /sys/fs/bpf
            - certificates  the agent did not answer
            1 check failed

            """,
            text);
    }

    [Fact]
    public async Task AgentChecks_AgainstARunningAgent_PassWithItsCertificatesAndInventory()
    {
        var (_, report, _) = await CheckAsync("--admin", _agent.Address);

        Assert.Equal("ok", Entry(report, "agent").GetProperty("status").GetString());
        Assert.Equal("ok", Entry(report, "inventory").GetProperty("status").GetString());
        var certificates = Entry(report, "certificates");
        Assert.Equal("ok", certificates.GetProperty("status").GetString());
        Assert.StartsWith("3 valid; the first CA or root expires in 36", certificates.GetProperty("detail").GetString());
    }

    [Fact]
    public async Task AgentChecks_FailOnACaWithinExpiryDays_AndExit1()
    {
        var (exit, report, _) = await CheckAsync("--admin", _agent.Address, "--expiry-days", "400");

        Assert.Equal(1, exit);
        Assert.False(report.GetProperty("ok").GetBoolean());
        var certificates = Entry(report, "certificates");
        Assert.Equal("fail", certificates.GetProperty("status").GetString());
        Assert.Contains("expires in 36", certificates.GetProperty("detail").GetString());
        Assert.Contains("rotate the CA", certificates.GetProperty("fix").GetString());
    }

    [Fact]
    public async Task AgentChecks_WithNoAgentListening_FailNamingTheFix_AndExit1()
    {
        var (exit, report, _) = await CheckAsync("--admin", $"127.0.0.1:{FakeAgent.FreePort()}");

        Assert.Equal(1, exit);
        var agent = Entry(report, "agent");
        Assert.Equal("fail", agent.GetProperty("status").GetString());
        Assert.Contains("connection refused", agent.GetProperty("detail").GetString());
        Assert.Contains("weft agent", agent.GetProperty("fix").GetString());
        Assert.Equal("skip", Entry(report, "certificates").GetProperty("status").GetString());
    }

    [Fact]
    public async Task Pre_ChecksOnlyTheNode_NotTheAgent()
    {
        var (_, report, _) = await CheckAsync("--pre", "--admin", $"127.0.0.1:{FakeAgent.FreePort()}");

        var names = report.GetProperty("checks").EnumerateArray().Select(c => c.GetProperty("name").GetString()).ToList();
        Assert.Contains("kernel", names);
        Assert.Contains("hook sk_lookup", names);
        Assert.DoesNotContain("agent", names);
        Assert.DoesNotContain("pins", names);
    }
}
